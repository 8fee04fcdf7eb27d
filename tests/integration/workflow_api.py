"""UI-format workflow -> API prompt, the way ComfyUI's frontend (1.27) does it in ``graphToPrompt``.

Used to run the example workflows through ``POST /prompt`` without a browser; ``test_frontend.py``
checks that it gives exactly what the real frontend's ``graphToPrompt`` gives for every example.

Widget values are positional in ``widgets_values``. Besides one entry per widget input of the schema the
frontend stores: the ``control_after_generate`` mode after an INT widget that has one (declared by the
schema, or, when the schema leaves it unset, any INT named ``seed`` or ``noise_seed`` — the frontend's
legacy rule) and the upload button's entry after an image/video/audio upload combo.
"""

from __future__ import annotations

from typing import Any

FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
ACTIVE_MODE = 0  # 2 = muted, 4 = bypassed: such nodes are not sent


def _inputs(info: dict) -> list[tuple[str, Any, dict]]:
    out = []
    for section in ("required", "optional"):
        entries = info.get("input", {}).get(section, {})
        for name in info.get("input_order", {}).get(section, list(entries)):
            spec = entries[name]
            out.append((name, spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}))
    return out


def _kind(raw: Any) -> str:
    return "COMBO" if isinstance(raw, list) else str(raw)


def has_control_widget(name: str, raw: Any, options: dict) -> bool:
    """Whether the frontend adds a ``control_after_generate`` combo after this widget."""
    if _kind(raw) != "INT":
        return bool(options.get("control_after_generate"))
    flag = options.get("control_after_generate")
    if flag is None:  # the frontend's legacy convention
        return name in ("seed", "noise_seed")
    return bool(flag)


def widget_layout(info: dict) -> list[str | None]:
    """Names of the entries of ``widgets_values`` for a node schema (None for the extra entries)."""
    layout: list[str | None] = []
    for name, raw, options in _inputs(info):
        if _kind(raw) not in WIDGET_TYPES or options.get("forceInput"):
            continue
        layout.append(name)
        if has_control_widget(name, raw, options):
            layout.append(None)
        if any(key.endswith("_upload") and flag is True for key, flag in options.items()):
            layout.append(None)
    return layout


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """The API prompt of a UI-format workflow (active nodes only), without ``_meta``.

    Raises ValueError for an unknown node type or a ``widgets_values`` list of the wrong length.
    """
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    prompt: dict[str, dict] = {}
    for node in workflow["nodes"]:
        ntype = node["type"]
        if ntype in FRONTEND_ONLY or node.get("mode", 0) != ACTIVE_MODE:
            continue
        if ntype not in object_info:
            raise ValueError(f"node {node['id']}: unknown node type {ntype!r}")
        info = object_info[ntype]
        layout = widget_layout(info)
        values = node.get("widgets_values") or []
        if len(values) != len(layout):
            raise ValueError(f"node {node['id']} ({ntype}): {len(values)} widgets_values, the frontend lays "
                             f"out {len(layout)} entries {layout}")
        inputs: dict[str, Any] = {name: value for name, value in zip(layout, values, strict=True) if name}
        for slot in node.get("inputs") or []:
            link_id = slot.get("link")
            if link_id is None:
                continue
            _, src, src_slot, _, _, _ = links[link_id]
            if nodes[src].get("mode", 0) != ACTIVE_MODE:
                raise ValueError(f"node {node['id']}: input {slot['name']!r} comes from an inactive node")
            inputs[slot["name"]] = [str(src), src_slot]
        prompt[str(node["id"])] = {"class_type": ntype, "inputs": inputs}
    return prompt


def strip_meta(prompt: dict) -> dict:
    """A prompt without ``_meta`` (titles), for comparisons."""
    return {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in prompt.items()}
