"""Every example workflow (``example_workflows/*.json``, UI format) is consistent with the node schemas:
the core nodes' (``tests/fixtures/comfyui_object_info_core.json``, captured from ComfyUI 0.3.64) and this
pack's (``tests/fixtures/equireg_object_info.json``, checked against the live server by the integration
tests). The checker itself (``tests/workflow_check.py``) is tested on a workflow built here and on broken
copies of it."""

from __future__ import annotations

import copy
import json

import pytest
from pack_import import ROOT
from workflow_check import check_workflow, schema_inputs

FIXTURES = ROOT / "tests" / "fixtures"
EXAMPLES = sorted((ROOT / "example_workflows").glob("*.json"))


def load_schemas() -> dict:
    core = json.loads((FIXTURES / "comfyui_object_info_core.json").read_text())
    core.pop("_source", None)
    ours = json.loads((FIXTURES / "equireg_object_info.json").read_text())
    assert not set(core) & set(ours), "the pack must not reuse core node ids"
    return {**core, **ours}


SCHEMAS = load_schemas()


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_workflow_is_consistent(path):
    workflow = json.loads(path.read_text())
    problems = check_workflow(workflow, SCHEMAS)
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_workflow_uses_the_pack(path):
    types = {node["type"] for node in json.loads(path.read_text())["nodes"]}
    assert any(t.startswith("EquiReg") for t in types), f"{path.name} uses no EquiReg node"


# ---------------------------------------------------------------------------------------------------
# The checker, on a workflow built from the schemas
# ---------------------------------------------------------------------------------------------------


def default_widgets(node_type: str, **values) -> list:
    """widgets_values as the frontend saves them: schema defaults, the seed mode after a seed, the upload
    button's entry after an image-upload combo."""
    out = []
    for name, kind, raw, options, _ in schema_inputs(SCHEMAS[node_type]):
        if kind not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") or options.get("forceInput"):
            continue
        if name in values:
            value = values[name]
        elif "default" in options:
            value = options["default"]
        else:
            value = (raw if isinstance(raw, list) else options.get("options"))[0]
        out.append(value)
        if options.get("control_after_generate"):
            out.append("fixed")
        if options.get("image_upload"):
            out.append("image")
    return out


class Builder:
    """Builds a UI-format workflow with the slot bookkeeping the frontend does."""

    def __init__(self) -> None:
        self.nodes: dict[int, dict] = {}
        self.links: list[list] = []

    def add(self, node_id: int, node_type: str, **widgets) -> int:
        info = SCHEMAS[node_type]
        self.nodes[node_id] = {
            "id": node_id,
            "type": node_type,
            "pos": [0, 0],
            "size": [300, 100],
            "flags": {},
            "order": node_id,
            "mode": 0,
            "inputs": [],
            "properties": {"Node name for S&R": node_type},
            "outputs": [
                {"name": name, "type": "COMBO" if isinstance(t, list) else t, "links": []}
                for name, t in zip(info["output_name"], info["output"], strict=True)
            ],
            "widgets_values": default_widgets(node_type, **widgets),
        }
        return node_id

    def link(self, src: int, src_slot: int, dst: int, input_name: str) -> None:
        link_id = len(self.links) + 1
        kind = {n: k for n, k, _, _, _ in schema_inputs(SCHEMAS[self.nodes[dst]["type"]])}[input_name]
        ltype = self.nodes[src]["outputs"][src_slot]["type"]
        self.nodes[dst]["inputs"].append({"name": input_name, "type": kind, "link": link_id})
        self.nodes[src]["outputs"][src_slot]["links"].append(link_id)
        self.links.append([link_id, src, src_slot, dst, len(self.nodes[dst]["inputs"]) - 1, ltype])

    def workflow(self) -> dict:
        return {
            "last_node_id": max(self.nodes),
            "last_link_id": len(self.links),
            "nodes": list(self.nodes.values()),
            "links": self.links,
            "groups": [],
            "config": {},
            "extra": {},
            "version": 0.4,
        }


def research_workflow() -> dict:
    """Simulate SR -> DPS (SamplerCustom) -> decode -> Metrics, as a user would wire it."""
    b = Builder()
    b.add(1, "CheckpointLoaderSimple", ckpt_name="any_model.safetensors")
    b.add(2, "LoadImage", image="photo.png")
    b.add(3, "EquiRegOperator", operator="super_resolution", sr_factor="4")
    b.add(4, "EquiRegSimulateMeasurement", seed=7)
    b.add(5, "EquiRegTargetLatent")
    b.add(6, "CLIPTextEncode", text="a photo")
    b.add(7, "CLIPTextEncode", text="")
    b.add(8, "EquiRegPosteriorSampler", solver="dps")
    b.add(9, "BasicScheduler", steps=10)
    b.add(10, "SamplerCustom", noise_seed=3, cfg=3.0)
    b.add(11, "VAEDecode")
    b.add(12, "EquiRegMetrics", label="DPS")
    b.add(13, "PreviewImage")
    b.link(2, 0, 4, "image")
    b.link(3, 0, 4, "operator")
    b.link(2, 1, 3, "mask")
    b.link(4, 0, 5, "measurement")
    b.link(1, 2, 5, "vae")
    b.link(1, 1, 6, "clip")
    b.link(1, 1, 7, "clip")
    b.link(4, 0, 8, "measurement")
    b.link(1, 2, 8, "vae")
    b.link(1, 0, 9, "model")
    b.link(1, 0, 10, "model")
    b.link(6, 0, 10, "positive")
    b.link(7, 0, 10, "negative")
    b.link(8, 0, 10, "sampler")
    b.link(9, 0, 10, "sigmas")
    b.link(5, 0, 10, "latent_image")
    b.link(10, 0, 11, "samples")
    b.link(1, 2, 11, "vae")
    b.link(11, 0, 12, "image")
    b.link(2, 0, 12, "reference")
    b.link(11, 0, 13, "images")
    return b.workflow()


def node(workflow: dict, node_id: int) -> dict:
    return next(n for n in workflow["nodes"] if n["id"] == node_id)


def test_checker_accepts_a_consistent_workflow():
    assert check_workflow(research_workflow(), SCHEMAS) == []


def _broken(edit) -> list[str]:
    wf = copy.deepcopy(research_workflow())
    edit(wf)
    return check_workflow(wf, SCHEMAS)


def _widget_index(node_type: str, name: str) -> int:
    """Position of a widget's value in widgets_values (extra entries of earlier widgets included)."""
    k = 0
    for n, kind, _, options, _ in schema_inputs(SCHEMAS[node_type]):
        if kind not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO") or options.get("forceInput"):
            continue
        if n == name:
            return k
        k += 1 + bool(options.get("control_after_generate")) + bool(options.get("image_upload"))
    raise KeyError(name)


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda wf: node(wf, 3).update(type="EquiRegOperatorX"),
            "node 3 (EquiRegOperatorX): unknown node type",
        ),
        (
            lambda wf: wf["links"][0].__setitem__(5, "LATENT"),
            "link 1: type LATENT but output 0 of LoadImage is IMAGE",
        ),
        (
            lambda wf: node(wf, 4)["widgets_values"].pop(),
            "node 4 (EquiRegSimulateMeasurement): 4 widgets_values for 5 widgets",
        ),
        (
            lambda wf: node(wf, 3)["widgets_values"].__setitem__(
                _widget_index("EquiRegOperator", "operator"), "blur"
            ),
            "operator='blur' is not one of",
        ),
        (
            lambda wf: node(wf, 3)["widgets_values"].__setitem__(
                _widget_index("EquiRegOperator", "kernel_size"), 0
            ),
            "kernel_size=0 is outside [1, 511]",
        ),
        (
            lambda wf: node(wf, 3)["widgets_values"].__setitem__(
                _widget_index("EquiRegOperator", "kernel_size"), 9.5
            ),
            "kernel_size must be an integer",
        ),
        (
            lambda wf: node(wf, 4)["widgets_values"].__setitem__(-1, "randomize"),
            "seed (control_after_generate) is 'randomize'; example workflows must use 'fixed'",
        ),
        (
            lambda wf: node(wf, 10)["widgets_values"].__setitem__(2, "sometimes"),
            "noise_seed (control_after_generate) must be one of",
        ),
        (lambda wf: node(wf, 12)["inputs"].pop(), "required input 'reference' (IMAGE) is not connected"),
        (
            lambda wf: node(wf, 4)["outputs"].pop(),
            "node 4 (EquiRegSimulateMeasurement): 1 outputs, the schema has 2",
        ),
        (lambda wf: node(wf, 5)["inputs"][0].update(link=99), "link 4: input 0 of node 5 records link 99"),
        (lambda wf: wf.update(last_link_id=3), "last_link_id 3 is below the largest link id"),
        (lambda wf: wf["nodes"].append(copy.deepcopy(node(wf, 13))), "node id 13 is used twice"),
    ],
)
def test_checker_finds_problems(edit, expected):
    problems = _broken(edit)
    assert any(expected in p for p in problems), problems


def test_checker_link_into_an_input_of_another_type():
    wf = research_workflow()
    # rewire the VAE link of Target Latent (link 5) to the checkpoint's MODEL output
    wf["links"][4][2] = 0
    wf["links"][4][5] = "MODEL"
    node(wf, 1)["outputs"][2]["links"].remove(5)
    node(wf, 1)["outputs"][0]["links"].append(5)
    problems = check_workflow(wf, SCHEMAS)
    assert any(
        "link 5: MODEL into input 'vae' of EquiRegTargetLatent, which takes VAE" in p for p in problems
    )


def test_checker_allows_frontend_only_nodes_and_muted_nodes():
    wf = research_workflow()
    wf["nodes"].append(
        {
            "id": 20,
            "type": "Note",
            "mode": 0,
            "inputs": [],
            "outputs": [],
            "widgets_values": ["Simulate, restore, compare."],
        }
    )
    node(wf, 12)["inputs"].pop()  # unconnected required input ...
    node(wf, 12)["mode"] = 4  # ... of a bypassed node
    wf["links"] = [lk for lk in wf["links"] if lk[3] != 12 or lk[4] != 1]
    node(wf, 2)["outputs"][0]["links"].remove(20)
    wf["last_node_id"] = 20
    assert check_workflow(wf, SCHEMAS) == []


def test_checker_rejects_api_format():
    assert check_workflow({"1": {"class_type": "LoadImage", "inputs": {}}}, SCHEMAS)[0].startswith(
        "not a UI-format"
    )


def test_checker_upload_slot_only_on_upload_widgets():
    """Frontend 1.27 saves LoadImage's upload button as an unlinked input slot named "upload"."""
    upload = {"name": "upload", "type": "IMAGEUPLOAD", "widget": {"name": "upload"}, "link": None}
    assert _broken(lambda wf: node(wf, 2).setdefault("inputs", []).append(dict(upload))) == []
    problems = _broken(lambda wf: node(wf, 11).setdefault("inputs", []).append(dict(upload)))
    assert any("input 'upload' does not exist" in p for p in problems), problems
