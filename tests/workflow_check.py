"""Static consistency check of a ComfyUI UI-format (litegraph) workflow against node schemas.

A workflow is checked against ``/object_info``-style node schemas (``{type: {"input": ..., "output": ...}}``),
without ComfyUI: node types exist; links point at existing nodes and slots, agree with the slot records
on both ends, and carry the type of the output socket into an input of a compatible type; required socket
inputs are connected; ``widgets_values`` has one entry per widget (plus the frontend's extra entries: the
``control_after_generate`` mode after a seed, the upload button after an image-upload combo) and every
value is valid for its widget (type, min/max, combo options). Example workflows must use the "fixed"
seed mode, so that they are reproducible.

UI format (frontend 1.27): ``{"nodes": [{"id", "type", "mode", "inputs": [{"name", "type", "link",
"widget"?}], "outputs": [{"name", "type", "links"}], "widgets_values": [...]}, ...], "links": [[id,
from_node, from_slot, to_node, to_slot, type], ...], "last_node_id", "last_link_id", ...}``.
"""

from __future__ import annotations

import json
import math
from typing import Any

#: Node types that exist only in the frontend (no backend schema).
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
#: Combo inputs whose options are the files of the user's model/input folders: any name is accepted.
FILE_COMBOS = {
    "ckpt_name",
    "vae_name",
    "unet_name",
    "clip_name",
    "clip_name1",
    "clip_name2",
    "clip_name3",
    "lora_name",
    "control_net_name",
    "upscale_model_name",
    "style_model_name",
    "clip_vision_name",
    "image",
    "mpe_file",
    "model_name",
    "gligen_name",
    "clip_name4",
    "file",
}
MUTED_MODES = (2, 4)  # never / bypass: such nodes do not run, so unconnected inputs are fine


def without_file_lists(info: dict) -> dict:
    """A copy of a node schema with the (environment-dependent) file-name dropdowns emptied."""
    info = json.loads(json.dumps(info))
    for section in ("required", "optional"):
        for name, spec in info.get("input", {}).get(section, {}).items():
            if name in FILE_COMBOS and isinstance(spec[0], list):
                spec[0] = []
            elif name in FILE_COMBOS and len(spec) > 1 and "options" in spec[1]:
                spec[1]["options"] = []
    return info


def schema_inputs(info: dict) -> list[tuple[str, str, Any, dict, bool]]:
    """(name, kind, raw type, options, required) of a node's inputs in the server's order."""
    out = []
    for section in ("required", "optional"):
        entries = info.get("input", {}).get(section, {})
        order = info.get("input_order", {}).get(section, list(entries))
        for name in order:
            spec = entries[name]
            raw = spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            kind = "COMBO" if isinstance(raw, list) else str(raw)
            out.append((name, kind, raw, options, section == "required"))
    return out


def combo_options(raw: Any, options: dict) -> list:
    return list(raw) if isinstance(raw, list) else list(options.get("options", []))


def is_widget(kind: str, options: dict) -> bool:
    return kind in WIDGET_TYPES and not options.get("forceInput")


def types_compatible(output_type: str, input_type: str) -> bool:
    """ComfyUI's rule: equal, a ``*`` wildcard on either side, or membership in a comma-separated union."""
    if output_type == "*" or input_type == "*":
        return True
    outs = {t.strip() for t in str(output_type).split(",")}
    ins = {t.strip() for t in str(input_type).split(",")}
    return bool(outs & ins)


def check_value(where: str, kind: str, raw: Any, options: dict, value: Any, name: str) -> list[str]:
    """Problems with one widget value."""
    if kind == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{where}: {name} must be an integer, got {value!r}"]
    elif kind == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return [f"{where}: {name} must be a finite number, got {value!r}"]
    elif kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: {name} must be a string, got {value!r}"]
    elif kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {name} must be true/false, got {value!r}"]
    elif kind == "COMBO":
        if name in FILE_COMBOS or not combo_options(raw, options):  # a folder listing (maybe empty here)
            return [] if isinstance(value, str) else [f"{where}: {name} must be a file name, got {value!r}"]
        choices = combo_options(raw, options)
        return [] if value in choices else [f"{where}: {name}={value!r} is not one of {choices}"]
    if kind in ("INT", "FLOAT"):
        lo, hi = options.get("min"), options.get("max")
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            return [f"{where}: {name}={value} is outside [{lo}, {hi}]"]
    return []


def check_widgets(where: str, info: dict, values: Any, require_fixed_seeds: bool) -> list[str]:
    if values is None:
        values = []
    if isinstance(values, dict):
        return [f"{where}: widgets_values is a dict; this check expects the positional list"]
    expected: list[tuple[str, Any]] = []  # (what, checker spec)
    for name, kind, raw, options, _ in schema_inputs(info):
        if not is_widget(kind, options):
            continue
        expected.append((name, (kind, raw, options)))
        if options.get("control_after_generate"):
            expected.append((f"{name} (control_after_generate)", "control"))
        if any(key.endswith("_upload") and flag is True for key, flag in options.items()):
            expected.append((f"{name} (upload button)", "upload"))  # image_upload, video_upload, ...
    if len(values) != len(expected):
        names = [what for what, _ in expected]
        return [f"{where}: {len(values)} widgets_values for {len(expected)} widgets {names}"]
    problems = []
    for (what, spec), value in zip(expected, values, strict=True):
        if spec == "control":
            if value not in CONTROL_VALUES:
                problems.append(f"{where}: {what} must be one of {CONTROL_VALUES}, got {value!r}")
            elif require_fixed_seeds and value != "fixed":
                problems.append(f"{where}: {what} is {value!r}; example workflows must use 'fixed'")
        elif spec == "upload":
            if not isinstance(value, str):
                problems.append(f"{where}: {what} must be a string, got {value!r}")
        else:
            kind, raw, options = spec
            problems += check_value(where, kind, raw, options, value, what)
    return problems


def check_workflow(workflow: Any, schemas: dict, require_fixed_seeds: bool = True) -> list[str]:
    """All problems found in a UI-format workflow (an empty list when it is consistent)."""
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        return ["not a UI-format workflow: no 'nodes' list (API-format prompts are not accepted here)"]
    if not isinstance(workflow.get("links"), list):
        return ["not a UI-format workflow: no 'links' list"]
    if workflow.get("definitions", {}).get("subgraphs"):
        return ["the workflow uses subgraphs, which this check does not support"]
    problems: list[str] = []
    nodes: dict[Any, dict] = {}
    for node in workflow["nodes"]:
        if node.get("id") in nodes:
            problems.append(f"node id {node.get('id')} is used twice")
        nodes[node.get("id")] = node
    links = {}
    for link in workflow["links"]:
        if not isinstance(link, list) or len(link) != 6:
            problems.append(f"link {link!r} is not [id, from_node, from_slot, to_node, to_slot, type]")
            continue
        if link[0] in links:
            problems.append(f"link id {link[0]} is used twice")
        links[link[0]] = link
    numeric_ids = [i for i in nodes if isinstance(i, int)]
    if numeric_ids and workflow.get("last_node_id", max(numeric_ids)) < max(numeric_ids):
        problems.append(
            f"last_node_id {workflow.get('last_node_id')} is below the largest node id {max(numeric_ids)}"
        )
    if links and workflow.get("last_link_id", max(links)) < max(links):
        problems.append(
            f"last_link_id {workflow.get('last_link_id')} is below the largest link id {max(links)}"
        )

    for node_id, node in nodes.items():
        ntype = node.get("type")
        where = f"node {node_id} ({ntype})"
        if ntype in FRONTEND_ONLY:
            continue
        info = schemas.get(ntype)
        if info is None:
            problems.append(f"{where}: unknown node type (not in the core or the EquiReg schemas)")
            continue
        inputs = {
            name: (kind, raw, options, required) for name, kind, raw, options, required in schema_inputs(info)
        }
        ui_inputs = node.get("inputs") or []
        # frontend 1.27 saves an upload button (an input with image_upload/..._upload: True) as a slot
        # named "upload"; it is a widget of the frontend, not an input of the server
        has_upload = any(key.endswith("_upload") and value is True
                         for _, _, _, options, _ in schema_inputs(info) for key, value in options.items())
        for slot in ui_inputs:
            if slot.get("name") == "upload" and has_upload and slot.get("link") is None:
                continue
            if slot.get("name") not in inputs:
                problems.append(
                    f"{where}: input {slot.get('name')!r} does not exist (inputs: {list(inputs)})"
                )
                continue
            kind, raw, options, _ = inputs[slot["name"]]
            if not is_widget(kind, options) and not types_compatible(slot.get("type", "*"), kind):
                problems.append(
                    f"{where}: input {slot['name']!r} is recorded as {slot.get('type')}, the schema says "
                    f"{kind}"
                )
        if node.get("mode", 0) not in MUTED_MODES:
            linked = {slot["name"] for slot in ui_inputs if slot.get("link") is not None}
            for name, (kind, _, options, required) in inputs.items():
                if required and not is_widget(kind, options) and name not in linked:
                    problems.append(f"{where}: required input {name!r} ({kind}) is not connected")
        outputs = node.get("outputs") or []
        if len(outputs) != len(info.get("output", [])):
            problems.append(f"{where}: {len(outputs)} outputs, the schema has {len(info.get('output', []))}")
        for k, (slot, out_type) in enumerate(zip(outputs, info.get("output", []), strict=False)):
            if isinstance(out_type, list):
                out_type = "COMBO"
            if slot.get("type") != out_type:
                problems.append(
                    f"{where}: output {k} is recorded as {slot.get('type')}, the schema says {out_type}"
                )
        problems += check_widgets(where, info, node.get("widgets_values"), require_fixed_seeds)

    for link_id, (_, src, src_slot, dst, dst_slot, ltype) in links.items():
        where = f"link {link_id}"
        if src not in nodes or dst not in nodes:
            problems.append(f"{where}: connects missing node(s) {src} -> {dst}")
            continue
        outs = nodes[src].get("outputs") or []
        ins = nodes[dst].get("inputs") or []
        if not 0 <= src_slot < len(outs) or not 0 <= dst_slot < len(ins):
            problems.append(f"{where}: slot out of range ({src}:{src_slot} -> {dst}:{dst_slot})")
            continue
        if link_id not in (outs[src_slot].get("links") or []):
            problems.append(f"{where}: not listed in the links of output {src_slot} of node {src}")
        if ins[dst_slot].get("link") != link_id:
            problems.append(
                f"{where}: input {dst_slot} of node {dst} records link {ins[dst_slot].get('link')}"
            )
        src_info = schemas.get(nodes[src].get("type"))
        dst_info = schemas.get(nodes[dst].get("type"))
        if src_info is not None and src_slot < len(src_info.get("output", [])):
            out_type = src_info["output"][src_slot]
            out_type = "COMBO" if isinstance(out_type, list) else out_type
            if not types_compatible(ltype, out_type):
                problems.append(
                    f"{where}: type {ltype} but output {src_slot} of {nodes[src]['type']} is {out_type}"
                )
        else:
            out_type = ltype
        if dst_info is not None:
            name = ins[dst_slot].get("name")
            spec = {n: k for n, k, _, _, _ in schema_inputs(dst_info)}.get(name)
            if spec is not None and not types_compatible(out_type, spec):
                problems.append(
                    f"{where}: {out_type} into input {name!r} of {nodes[dst]['type']}, which takes {spec}"
                )
    return problems
