"""Node schemas.

Without ComfyUI (CI): the committed ``tests/fixtures/equireg_object_info.json`` (this pack's
``/object_info`` entries, captured from a live server by ``tests/integration/test_pack_server.py``) must
describe exactly the nodes declared in ``nodes/`` and follow the pack's conventions: ids ``EquiReg*``,
categories ``EquiReg/...``, a description, a tooltip on every input, valid widget defaults.

With ComfyUI importable (``COMFYUI_PATH`` set and ComfyUI's Python environment): every node module
imports, every schema validates, the schemas equal the fixture, and the comfy-infra nodes execute.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os

import pytest
import torch
from pack_import import ROOT, pack_module
from workflow_check import FILE_COMBOS, without_file_lists

FIXTURE = ROOT / "tests" / "fixtures" / "equireg_object_info.json"
NODE_MODULES = pack_module("nodes").NODE_MODULES
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def load_fixture() -> dict:
    return json.loads(FIXTURE.read_text())


def declared_node_ids() -> dict[str, str]:
    """node_id="..." keywords of io.Schema(...) calls in the node modules -> module name (parsed, not
    imported: node modules need ComfyUI)."""
    found = {}
    for name in NODE_MODULES:
        path = ROOT / "nodes" / f"{name}.py"
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Schema":
                for kw in node.keywords:
                    if kw.arg == "node_id" and isinstance(kw.value, ast.Constant):
                        found[kw.value.value] = name
    return found


def inputs_of(info: dict) -> list[tuple[str, str, list]]:
    """(section, name, spec) of every input of an /object_info entry (hidden inputs excluded)."""
    return [(section, name, spec) for section in ("required", "optional")
            for name, spec in info["input"].get(section, {}).items()]


# ---------------------------------------------------------------------------------------------------
# CI: the fixture
# ---------------------------------------------------------------------------------------------------


def test_fixture_lists_exactly_the_declared_nodes():
    declared = declared_node_ids()
    assert declared, "no node_id found in the node modules"
    fixture = load_fixture()
    assert set(fixture) == set(declared), (
        f"{FIXTURE.name} is stale: only in nodes/: {sorted(set(declared) - set(fixture))}, only in the "
        f"fixture: {sorted(set(fixture) - set(declared))}; regenerate it (test_pack_server.py)"
    )


@pytest.mark.parametrize("node_id", sorted(load_fixture()))
def test_node_conventions(node_id):
    info = load_fixture()[node_id]
    assert info["name"] == node_id and node_id.startswith("EquiReg")
    assert info["display_name"].startswith("EquiReg ")
    assert info["category"].startswith("EquiReg/")
    assert info["python_module"] == "custom_nodes.equireg_nodes"
    assert len(info["description"]) > 30
    assert info["input_order"].get("required", []) == list(info["input"].get("required", {}))
    n_out = len(info["output"])
    assert n_out == len(info["output_name"]) == len(info["output_is_list"]) == len(info["output_tooltips"])
    for section, name, spec in inputs_of(info):
        kind = spec[0]
        options = spec[1] if len(spec) > 1 else {}
        assert options.get("tooltip"), f"{node_id}.{name} ({section}) has no tooltip"
        if kind == "COMBO" or isinstance(kind, list):
            choices = options.get("options", kind if isinstance(kind, list) else None)
            if name in FILE_COMBOS:  # a listing of the user's model folder: empty where it holds no file
                continue
            assert choices, f"{node_id}.{name}: a combo without options"
            if "default" in options:
                assert options["default"] in choices, f"{node_id}.{name}: default not among the options"
        elif kind in ("INT", "FLOAT") and "default" in options:
            lo, hi = options.get("min", -float("inf")), options.get("max", float("inf"))
            assert lo <= options["default"] <= hi, f"{node_id}.{name}: default outside [min, max]"


def test_comfy_infra_widgets_match_the_logic():
    """The dropdowns offer exactly what the node functions accept."""
    logic = pack_module("nodes.logic")
    ntypes = pack_module("nodes.types")
    fixture = load_fixture()
    op = fixture["EquiRegOperator"]["input"]["required"]
    assert op["operator"][1]["options"] == list(ntypes.NODE_OPERATORS)
    assert op["sr_factor"][1]["options"] == list(logic.SR_FACTORS)
    assert op["mask_type"][1]["options"] == list(logic.MASK_TYPES)
    assert op["box_position"][1]["options"] == list(logic.BOX_POSITIONS)
    assert fixture["EquiRegOperator"]["input"]["optional"]["mask"][0] == "MASK"
    for node in ("EquiRegSimulateMeasurement", "EquiRegMeasurementFromImage"):
        assert fixture[node]["input"]["required"]["noise"][1]["options"] == list(ntypes.NOISE_NAMES)
        assert fixture[node]["output"][0] == "MEASUREMENT"
    assert fixture["EquiRegSimulateMeasurement"]["input"]["required"]["seed"][1]["control_after_generate"]
    target = fixture["EquiRegTargetLatent"]
    assert target["input"]["required"]["init"][1]["options"] == list(logic.LATENT_INITS)
    assert fixture["EquiRegTargetLatent"]["output"] == ["LATENT", "IMAGE"]
    assert fixture["EquiRegMetrics"]["output"] == ["FLOAT", "FLOAT", "STRING"]
    assert fixture["EquiRegMetrics"]["output_node"] is True


# ---------------------------------------------------------------------------------------------------
# With ComfyUI importable
# ---------------------------------------------------------------------------------------------------


def _comfy_io():
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        pytest.skip("needs ComfyUI's comfy_api: set COMFYUI_PATH and use ComfyUI's Python environment")
    try:  # pack_import has put COMFYUI_PATH on sys.path
        from comfy_api.latest import io
    except ImportError as err:
        pytest.skip(f"comfy_api is not importable from COMFYUI_PATH={path}: {err}")
    return io


@pytest.fixture(scope="module")
def comfy_nodes():
    io = _comfy_io()
    nodes, failures = pack_module("nodes").collect_nodes()
    return io, {cls.GET_SCHEMA().node_id: cls for cls in nodes}, failures


def test_every_node_module_imports_and_schemas_validate(comfy_nodes):
    io, nodes, failures = comfy_nodes
    assert not failures, f"node modules failed to import: {failures}"
    for cls in nodes.values():
        assert issubclass(cls, io.ComfyNode)
        cls.GET_SCHEMA().validate()
    ext = asyncio.run(pack_module("nodes").comfy_extension())
    assert {c.GET_SCHEMA().node_id for c in asyncio.run(ext.get_node_list())} == set(nodes)


def test_schemas_equal_the_fixture(comfy_nodes):
    _, nodes, _ = comfy_nodes
    fixture = load_fixture()
    assert set(nodes) == set(fixture)
    for node_id, cls in nodes.items():
        live = json.loads(json.dumps(cls.GET_NODE_INFO_V1()))
        expected = dict(fixture[node_id])
        live.pop("python_module", None)
        expected.pop("python_module", None)
        # file-name dropdowns list the model folders of the machine that captured the fixture
        same = without_file_lists(live) == without_file_lists(expected)
        assert same, f"{node_id}: schema differs from {FIXTURE.name}; regenerate it"


class _FakeVae:
    """The part of ComfyUI's VAE API that Target Latent uses (8x downscale, 4 channels)."""

    latent_dim = 2
    latent_channels = 4

    def spacial_compression_encode(self) -> int:
        return 8

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        pooled = torch.nn.functional.avg_pool2d(image.permute(0, 3, 1, 2), 8)
        return torch.cat([pooled, pooled[:, :1]], dim=1)


def test_comfy_infra_nodes_execute(comfy_nodes):
    _, nodes, _ = comfy_nodes
    image = torch.rand(2, 32, 32, 3)
    (spec,) = nodes["EquiRegOperator"].execute(
        operator="super_resolution", sr_factor="4", kernel_size=61, blur_sigma=3.0, motion_intensity=0.5,
        seed=0, mask_type="box", box_size=0, box_position="center", random_fraction=0.7, pr_oversample=2.0,
        hdr_scale=2.0).args
    measurement, view = nodes["EquiRegSimulateMeasurement"].execute(
        image=image, operator=spec, noise="gaussian", sigma=0.05, poisson_rate=1.0, seed=3).args
    assert tuple(measurement.y.shape) == (2, 3, 8, 8) and view.shape == (2, 32, 32, 3)
    from_image, width, height = nodes["EquiRegMeasurementFromImage"].execute(
        image=image[:, :8, :8], operator=spec, noise="none", sigma=0.0, poisson_rate=1.0).args
    assert (width, height) == (32, 32) and from_image.image_size == (32, 32)
    latent, init_image = nodes["EquiRegTargetLatent"].execute(
        measurement=measurement, vae=_FakeVae(), init="measurement").args
    assert latent["samples"].shape == (2, 4, 4, 4) and init_image.shape == (2, 32, 32, 3)
    out = nodes["EquiRegMetrics"].execute(image=image, reference=image[:1], label="x")
    psnr, ssim, text = out.args
    assert psnr == float("inf") or psnr > 0
    assert out.ui == {"text": [text]} and text.startswith("x: PSNR")


def test_seed_inputs_declare_control_after_generate():
    """The frontend adds a "control after generate" widget to any INT input named seed/noise_seed that
    does not say otherwise; an undeclared one re-randomises the value and shifts positional widgets."""
    for node_id, info in load_fixture().items():
        for _, name, spec in inputs_of(info):
            if name in ("seed", "noise_seed") and spec[0] == "INT":
                assert "control_after_generate" in spec[1], f"{node_id}.{name}"
