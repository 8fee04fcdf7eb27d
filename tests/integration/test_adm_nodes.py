"""Pixel-space (ADM) models in the real ComfyUI: the loader and VAE nodes, the two example workflows, a plain
KSampler and the Posterior Guider on the pixel-space MODEL.

A random-weight ADM is saved by our own code (``save_adm_safetensors``, and as a plain ``.pt`` state dict)
into the checkout's ``models/pixel_diffusion``; the example workflows (UI format) are converted to API
prompts with the live ``/object_info`` and run end to end at 32 px with 3 steps.

The example workflows are generated from the API graphs below (layout included); after changing a graph or
a node schema, rewrite them with::

    EQUIREG_WRITE_EXAMPLES=1 COMFYUI_PATH=... <comfy venv>/bin/python -m pytest tests/integration -k adm

In-process tests (the ``inproc_*`` ones) import ComfyUI's modules directly (``COMFYUI_PATH`` on
``sys.path``, CPU) to check the MODEL's numerics against the reference denoiser.
"""

from __future__ import annotations

import copy
import fcntl
import json
import math
import os
import sys
import uuid
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from conftest import PromptFailed, synthetic_image

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = REPO_ROOT / "example_workflows"
TINY_SAFETENSORS = "equireg_tiny_adm.safetensors"
TINY_PT = "equireg_tiny_adm.pt"
TINY_CONFIG = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,),
                   out_channels=6)
WIDGET_KINDS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
TEST_SIZE = 32
TEST_STEPS = 3


def _pack_module(name: str):
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    try:
        from pack_import import pack_module
    finally:
        sys.path.pop(0)
    return pack_module(name)


def random_adm(seed: int = 0):
    """A small ADM (32/64 channels, attention with one 64-channel head) whose every weight is random."""
    import torch

    models = _pack_module("samplers.models")
    net = models.ADMUNet(models.ADMConfig(**TINY_CONFIG))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


@pytest.fixture(scope="session")
def tiny_adm(comfyui_path: Path) -> dict:
    """Random-weight ADM files in ``models/pixel_diffusion``: {"safetensors": name, "pt": name}."""
    import torch

    models = _pack_module("samplers.models")
    folder = comfyui_path / "models" / "pixel_diffusion"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".equireg_tiny_adm.lock", "w") as lock:  # test sessions may share the checkout
        fcntl.flock(lock, fcntl.LOCK_EX)
        net = random_adm(0)
        tmp = folder / (TINY_SAFETENSORS + ".tmp")
        models.save_adm_safetensors(net, tmp)
        os.replace(tmp, folder / TINY_SAFETENSORS)
        tmp = folder / (TINY_PT + ".tmp")
        torch.save(net.state_dict(), tmp)
        os.replace(tmp, folder / TINY_PT)
    return {"safetensors": TINY_SAFETENSORS, "pt": TINY_PT}


# ---------------------------------------------------------------------------------------------------
# API <-> UI workflow conversion (the frontend's formats, see comfyui_integration.md section 8)
# ---------------------------------------------------------------------------------------------------


def _inputs(info: dict) -> list[tuple[str, str, list]]:
    """(section, name, spec) of a node's inputs in the frontend's order (required, then optional)."""
    out = []
    for section in ("required", "optional"):
        specs = info["input"].get(section, {})
        order = info.get("input_order", {}).get(section, list(specs))
        out += [(section, name, specs[name]) for name in order]
    return out


def _is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_KINDS


def _extra_widget_values(spec: list) -> int:
    """Values the frontend stores after a widget's own: the seed's 'control after generate' mode, the
    image upload button."""
    options = spec[1] if len(spec) > 1 else {}
    return int(bool(options.get("control_after_generate"))) + int(bool(options.get("image_upload")))


def complete_prompt(api: dict, object_info: dict) -> dict:
    """The API prompt with every widget input that the graph leaves out set to its default."""
    full = copy.deepcopy(api)
    for node in full.values():
        info = object_info[node["class_type"]]
        for _section, name, spec in _inputs(info):
            if name in node["inputs"] or not _is_widget(spec):
                continue
            options = spec[1] if len(spec) > 1 else {}
            if "default" in options:
                node["inputs"][name] = options["default"]
            elif isinstance(spec[0], list):
                node["inputs"][name] = spec[0][0]
    return full


def _topological(api: dict) -> list[str]:
    deps = {nid: {v[0] for v in n["inputs"].values() if isinstance(v, list)} for nid, n in api.items()}
    ready = deque(sorted((n for n, d in deps.items() if not d), key=int))
    order = []
    while ready:
        nid = ready.popleft()
        order.append(nid)
        for other, d in deps.items():
            if nid in d:
                d.discard(nid)
                if not d and other not in order and other not in ready:
                    ready.append(other)
    assert len(order) == len(api), "the graph has a cycle"
    return order


def api_to_ui(api: dict, object_info: dict, layout: dict[str, tuple[float, float]], name: str) -> dict:
    """A UI-format (litegraph, version 0.4) workflow for an API prompt: sockets, positional widget values
    (seeds 'fixed'), links, positions from ``layout`` and a size estimate; its id is a UUID derived from
    ``name`` (the frontend's schema requires a UUID)."""
    order = {nid: i for i, nid in enumerate(_topological(api))}
    links: list[list] = []
    out_links: dict[tuple[str, int], list[int]] = {}
    nodes = []
    for nid in sorted(api, key=int):
        node = api[nid]
        info = object_info[node["class_type"]]
        ui_inputs, widgets = [], []
        for section, name, spec in _inputs(info):
            value = node["inputs"].get(name)
            if _is_widget(spec):
                assert not isinstance(value, list), f"{nid}.{name}: linked widgets are not used here"
                widgets.append(value)
                options = spec[1] if len(spec) > 1 else {}
                if options.get("control_after_generate"):
                    widgets.append("fixed")
                if options.get("image_upload"):
                    widgets.append("image")
                continue
            entry = {"name": name, "type": spec[0], "link": None}
            if section == "optional":
                entry["shape"] = 7
            if isinstance(value, list):
                link_id = len(links) + 1
                src, slot = value
                src_type = object_info[api[src]["class_type"]]["output"][slot]
                links.append([link_id, int(src), slot, int(nid), len(ui_inputs), src_type])
                out_links.setdefault((src, slot), []).append(link_id)
                entry["link"] = link_id
            ui_inputs.append(entry)
        n_widgets = len([s for _, _, s in _inputs(info) if _is_widget(s)])
        height = 30 + 22 * max(len(ui_inputs), len(info["output"])) + 26 * n_widgets
        if node["class_type"] in ("SaveImage", "PreviewImage", "LoadImage"):
            height = max(height, 300)
        ui = {
            "id": int(nid), "type": node["class_type"], "pos": list(layout[nid]),
            "size": [340 if n_widgets > 10 else 300, height], "flags": {}, "order": order[nid], "mode": 0,
            "inputs": ui_inputs, "outputs": [],
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
        }
        if "_meta" in node:
            ui["title"] = node["_meta"]["title"]
        nodes.append(ui)
    for ui in nodes:
        info = object_info[ui["type"]]
        ui["outputs"] = [
            {"name": out_name, "type": kind, "links": out_links.get((str(ui["id"]), slot)) or None,
             "slot_index": slot}
            for slot, (out_name, kind) in enumerate(zip(info["output_name"], info["output"], strict=True))
        ]
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"equireg/example_workflows/{name}")), "revision": 0,
        "last_node_id": max(int(n) for n in api),
        "last_link_id": len(links),
        "nodes": nodes, "links": links, "groups": [], "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}}, "version": 0.4,
    }


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """The API prompt of a UI-format workflow (what the frontend's graphToPrompt sends), strictly: every
    widget value is consumed, every link resolves, muted/bypassed nodes are not expected."""
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        assert node.get("mode", 0) == 0, f"node {node['id']} is muted or bypassed"
        info = object_info[node["type"]]
        inputs: dict = {}
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                link = links[entry["link"]]
                assert link[3] == node["id"], f"link {link} does not end at node {node['id']}"
                inputs[entry["name"]] = [str(link[1]), link[2]]
        values = list(node.get("widgets_values", []))
        for _section, name, spec in _inputs(info):
            if not _is_widget(spec):
                continue
            assert values, f"node {node['id']} ({node['type']}): no widget value left for {name}"
            inputs[name] = values.pop(0)
            for _ in range(_extra_widget_values(spec)):
                values.pop(0)
        assert not values, f"node {node['id']} ({node['type']}): unused widget values {values}"
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def _strip_meta(api: dict) -> dict:
    return {nid: {"class_type": n["class_type"], "inputs": n["inputs"]} for nid, n in api.items()}


# ---------------------------------------------------------------------------------------------------
# The example workflows (canonical API graphs; widgets left out take their defaults)
# ---------------------------------------------------------------------------------------------------


def _dps_graph(image_title: str, checkpoint: str, checkpointing: bool, operator: dict, step_size: float,
               save_prefix: str, label: str) -> tuple[dict, dict]:
    """DPS with a pixel-space ADM: clean image -> simulated measurement (sigma_y 0.05) -> DPS over all 1000
    steps of the ADM schedule (DDPM ancestral, eta 1) -> restored image, PSNR/SSIM against the clean one."""
    api = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}, "_meta": {"title": image_title}},
        "2": {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "bicubic",
                                                     "width": 256, "height": 256, "crop": "center"},
              "_meta": {"title": "Clean image 256x256"}},
        "3": {"class_type": "EquiRegLoadPixelDiffusionModel",
              "inputs": {"model_name": checkpoint, "weight_dtype": "auto",
                         "gradient_checkpointing": checkpointing, "num_head_channels": 64}},
        "4": {"class_type": "EquiRegPixelSpaceVAE", "inputs": {}},
        "5": {"class_type": "EquiRegOperator", "inputs": operator},
        "6": {"class_type": "EquiRegSimulateMeasurement",
              "inputs": {"image": ["2", 0], "operator": ["5", 0], "noise": "gaussian", "sigma": 0.05,
                         "poisson_rate": 1.0, "seed": 0}},
        "7": {"class_type": "EquiRegTargetLatent", "inputs": {"measurement": ["6", 0], "vae": ["4", 0],
                                                             "init": "empty"}},
        "8": {"class_type": "EquiRegPosteriorSampler",
              "inputs": {"solver": "dps", "measurement": ["6", 0], "vae": ["4", 0],
                         "dps_step_size": step_size, "dps_eta": 1.0}},
        "9": {"class_type": "BasicScheduler", "inputs": {"model": ["3", 0], "scheduler": "normal",
                                                         "steps": 1000, "denoise": 1.0}},
        "10": {"class_type": "SamplerCustom",
               "inputs": {"model": ["3", 0], "add_noise": True, "noise_seed": 42, "cfg": 1.0,
                          "positive": ["3", 1], "negative": ["3", 1], "sampler": ["8", 0],
                          "sigmas": ["9", 0], "latent_image": ["7", 0]}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["4", 0]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": save_prefix}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["6", 1]},
               "_meta": {"title": "Measurement"}},
        "14": {"class_type": "EquiRegMetrics", "inputs": {"image": ["11", 0], "reference": ["2", 0],
                                                          "label": label}},
    }
    layout = {
        "1": (0, 0), "2": (0, 360), "3": (0, 560), "4": (0, 760),
        "5": (360, 0), "6": (360, 460), "7": (360, 700), "13": (360, 880),
        "8": (740, 0), "9": (1120, 0), "10": (1120, 160),
        "11": (1500, 0), "12": (1500, 120), "14": (1500, 480),
    }
    return api, layout


def _operator(name: str, **params) -> dict:
    base = {"operator": name, "sr_factor": "4", "kernel_size": 61, "blur_sigma": 3.0, "motion_intensity": 0.5,
            "seed": 0, "mask_type": "box", "box_size": 0, "box_position": "center", "random_fraction": 0.7,
            "pr_oversample": 2.0, "hdr_scale": 2.0}
    base.update(params)
    return base


EXAMPLES = {
    # DPS (Chung et al. 2023), FFHQ 256, super-resolution x4 (bicubic), sigma_y 0.05, step size 0.3.
    "adm_ffhq_sr4_dps": lambda: _dps_graph(
        "Load Image (a face photo; FFHQ 256x256 in the paper)", "ffhq_10m.pt", False,
        _operator("super_resolution", sr_factor="4"), 0.3, "EquiReg/adm_ffhq_sr4_dps", "DPS SR x4 (FFHQ)"),
    # DPS, ImageNet 256 (OpenAI unconditional ADM), 128x128 box at a random position (DPS's 16 px
    # margins), sigma_y 0.05, step size 0.5 (DPS's inpainting setting). Gradient checkpointing on: the
    # 553 M-parameter network's backward pass otherwise stores about 8 GiB of activations.
    "adm_imagenet_box_inpainting": lambda: _dps_graph(
        "Load Image (an ImageNet photo)", "256x256_diffusion_uncond.pt", True,
        _operator("inpainting", mask_type="box", box_size=128, box_position="random", seed=0), 0.5,
        "EquiReg/adm_imagenet_box_inpainting", "DPS box inpainting (ImageNet)"),
}


def example_path(name: str) -> Path:
    return EXAMPLES_DIR / f"{name}.json"


@pytest.fixture(scope="session")
def example_files(comfy) -> dict[str, Path]:
    """The committed example workflows (written from EXAMPLES first with EQUIREG_WRITE_EXAMPLES=1)."""
    if os.environ.get("EQUIREG_WRITE_EXAMPLES"):
        for name, make in EXAMPLES.items():
            api, layout = make()
            api = complete_prompt(api, comfy.object_info)
            ui = api_to_ui(api, comfy.object_info, layout, name)
            example_path(name).write_text(json.dumps(ui, indent=1) + "\n")
    return {name: example_path(name) for name in EXAMPLES}


# ---------------------------------------------------------------------------------------------------
# Server tests
# ---------------------------------------------------------------------------------------------------


def test_pixel_nodes_are_registered(comfy, tiny_adm, equireg_object_info):
    loader = equireg_object_info["EquiRegLoadPixelDiffusionModel"]
    assert loader["category"] == "EquiReg/loaders"
    assert loader["output"] == ["MODEL", "CONDITIONING"]
    required = loader["input"]["required"]
    assert required["weight_dtype"][1]["options"] == ["auto", "fp32", "fp16", "bf16"]
    assert required["num_head_channels"][1]["default"] == 64
    assert required["gradient_checkpointing"][1]["default"] is False
    vae = equireg_object_info["EquiRegPixelSpaceVAE"]
    assert vae["category"] == "EquiReg/loaders" and vae["output"] == ["VAE"]
    # The model folder is listed live: the files written after startup are offered.
    live = comfy.get("/object_info/EquiRegLoadPixelDiffusionModel").json()["EquiRegLoadPixelDiffusionModel"]
    options = live["input"]["required"]["model_name"][1]["options"]
    assert {tiny_adm["safetensors"], tiny_adm["pt"]} <= set(options), options
    # The example workflows are offered in the frontend's template browser under the pack's folder name.
    templates = comfy.get("/workflow_templates").json()
    assert set(EXAMPLES) <= set(templates.get("equireg_nodes", [])), templates


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_workflow_is_the_api_graph(comfy, example_files, name):
    """The committed UI file converts (as the frontend would) to exactly the canonical API graph."""
    path = example_files[name]
    assert path.exists(), f"{path} is missing; write it with EQUIREG_WRITE_EXAMPLES=1"
    ui = json.loads(path.read_text())
    assert ui["version"] == 0.4 and ui["last_node_id"] == max(n["id"] for n in ui["nodes"])
    assert ui["last_link_id"] == max(link[0] for link in ui["links"])
    api, _ = EXAMPLES[name]()
    assert ui_to_api(ui, comfy.object_info) == _strip_meta(complete_prompt(api, comfy.object_info))
    for node in ui["nodes"]:  # seeds are fixed in shipped examples
        info = comfy.object_info[node["type"]]
        if any((s[1] if len(s) > 1 else {}).get("control_after_generate") for _, _, s in _inputs(info)):
            assert "fixed" in node["widgets_values"], node
    # Links carry the source socket's type and end at a socket of the same type.
    by_id = {n["id"]: n for n in ui["nodes"]}
    for link_id, src, slot, dst, dst_slot, kind in ui["links"]:
        assert by_id[src]["outputs"][slot]["type"] == kind
        target = by_id[dst]["inputs"][dst_slot]
        assert target["type"] == kind and target["link"] == link_id
        assert link_id in by_id[src]["outputs"][slot]["links"]


def frontend_widget_count(info: dict) -> int:
    """How many widgets_values the ComfyUI frontend (1.27) expects for a node: one per widget, plus the
    'control after generate' widget that it adds to an INT input with ``control_after_generate``, or, when
    the schema does not say (``control_after_generate ?? name in ('seed', 'noise_seed')``), to any INT
    input named seed/noise_seed; plus the upload button of an image-upload combo."""
    count = 0
    for _section, name, spec in _inputs(info):
        if not _is_widget(spec):
            continue
        options = spec[1] if len(spec) > 1 else {}
        control = options.get("control_after_generate")
        if control is None:
            control = spec[0] == "INT" and name in ("seed", "noise_seed")
        count += 1 + int(bool(control)) + int(bool(options.get("image_upload")))
    return count


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_workflow_widgets_as_the_frontend_reads_them(comfy, example_files, name):
    """The frontend assigns widgets_values by position; with a different count every widget after the
    first difference gets its neighbour's value (checked in headless Chromium: an INT input named 'seed'
    without control_after_generate in its schema gets a 'control after generate' widget)."""
    ui = json.loads(example_files[name].read_text())
    wrong = []
    for node in ui["nodes"]:
        expected = frontend_widget_count(comfy.object_info[node["type"]])
        if expected != len(node["widgets_values"]):
            wrong.append(f"node {node['id']} ({node['type']}): {len(node['widgets_values'])} widgets_values, "
                         f"the frontend expects {expected}")
    assert not wrong, ("; ".join(wrong) + ". An INT input named 'seed' needs control_after_generate=False "
                       "(or True) in its schema, or the frontend adds a randomizing seed control to it.")


def _metrics_psnr(comfy, entry: dict, node_id: str) -> float:
    (text,) = comfy.node_output(entry, node_id)["text"]
    value = text.split("PSNR", 1)[1].split()[0].strip(":=")
    return float(value)


def _small_prompt(comfy, name: str, checkpoint: str) -> dict:
    ui = json.loads(example_path(name).read_text())
    api = ui_to_api(ui, comfy.object_info)
    picture = comfy.put_input_image(f"adm_{name}.png", synthetic_image(48, 40, seed=3))
    for node in api.values():
        kind, inputs = node["class_type"], node["inputs"]
        if kind == "LoadImage":
            inputs["image"] = picture
        elif kind == "ImageScale":
            inputs["width"] = inputs["height"] = TEST_SIZE
        elif kind == "EquiRegLoadPixelDiffusionModel":
            inputs["model_name"] = checkpoint
        elif kind == "BasicScheduler":
            inputs["steps"] = TEST_STEPS
        elif kind == "EquiRegOperator" and inputs["operator"] == "inpainting":
            inputs["box_size"] = TEST_SIZE // 2
        elif kind == "SaveImage":
            inputs["filename_prefix"] = f"test_{name}"
    return api


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_workflow_runs_on_a_tiny_adm(comfy, tiny_adm, example_files, name):
    """Each example end to end (32 px, 3 steps) on a random-weight ADM saved by our code."""
    api = _small_prompt(comfy, name, tiny_adm["safetensors"])
    save = next(nid for nid, n in api.items() if n["class_type"] == "SaveImage")
    metrics = next(nid for nid, n in api.items() if n["class_type"] == "EquiRegMetrics")
    entry = comfy.run(api, timeout=600)
    (image,) = comfy.output_images(entry, save)
    assert image.shape == (TEST_SIZE, TEST_SIZE, 3)
    assert np.isfinite(image).all() and image.std() > 0.01
    psnr = _metrics_psnr(comfy, entry, metrics)
    assert math.isfinite(psnr) and psnr > 0


def test_plain_samplers_and_guider_on_the_pixel_model(comfy, tiny_adm):
    """The same MODEL in a plain KSampler (img2img from VAE Encode, and from an Empty Latent Image, whose
    4 channels ComfyUI fits to the model's 3) and in the Posterior Guider with dpmpp_2m; loaded from the
    .pt file with fp16 asked on a CPU (falls back to float32) and gradient checkpointing on."""
    size = 16
    picture = comfy.put_input_image("adm_plain.png", synthetic_image(size, size, seed=5))
    prompt = {
        "1": {"class_type": "EquiRegLoadPixelDiffusionModel",
              "inputs": {"model_name": tiny_adm["pt"], "weight_dtype": "fp16", "gradient_checkpointing": True,
                         "num_head_channels": 64}},
        "2": {"class_type": "EquiRegPixelSpaceVAE", "inputs": {}},
        "3": {"class_type": "LoadImage", "inputs": {"image": picture}},
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["2", 0]}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 7, "steps": TEST_STEPS, "cfg": 1.0, "sampler_name": "euler",
            "scheduler": "normal", "positive": ["1", 1], "negative": ["1", 1], "latent_image": ["4", 0],
            "denoise": 0.6}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["2", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "adm_img2img"}},
        "8": {"class_type": "EmptyLatentImage", "inputs": {"width": 8 * size, "height": 8 * size,
                                                           "batch_size": 2}},
        "9": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 7, "steps": TEST_STEPS, "cfg": 2.0, "sampler_name": "dpmpp_2m",
            "scheduler": "karras", "positive": ["1", 1], "negative": ["1", 1], "latent_image": ["8", 0],
            "denoise": 1.0}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["2", 0]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "adm_txt2img"}},
        "12": {"class_type": "EquiRegOperator", "inputs": _operator("super_resolution", sr_factor="4")},
        "13": {"class_type": "EquiRegSimulateMeasurement", "inputs": {
            "image": ["3", 0], "operator": ["12", 0], "noise": "gaussian", "sigma": 0.05, "poisson_rate": 1.0,
            "seed": 1}},
        "14": {"class_type": "EquiRegTargetLatent", "inputs": {"measurement": ["13", 0], "vae": ["2", 0],
                                                              "init": "empty"}},
        "15": {"class_type": "EquiRegPosteriorGuider", "inputs": {
            "model": ["1", 0], "positive": ["1", 1], "negative": ["1", 1], "cfg": 1.0,
            "measurement": ["13", 0], "vae": ["2", 0], "step_size": 0.3}},
        "16": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
        "17": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "karras",
                                                          "steps": TEST_STEPS, "denoise": 1.0}},
        "18": {"class_type": "RandomNoise", "inputs": {"noise_seed": 3}},
        "19": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["18", 0], "guider": ["15", 0], "sampler": ["16", 0], "sigmas": ["17", 0],
            "latent_image": ["14", 0]}},
        "20": {"class_type": "VAEDecode", "inputs": {"samples": ["19", 0], "vae": ["2", 0]}},
        "21": {"class_type": "SaveImage", "inputs": {"images": ["20", 0], "filename_prefix": "adm_guider"}},
    }
    entry = comfy.run(prompt, timeout=600)
    for node_id, count in (("7", 1), ("11", 2), ("21", 1)):
        images = comfy.output_images(entry, node_id)
        assert len(images) == count
        for image in images:
            assert image.shape == (size, size, 3) and np.isfinite(image).all() and image.std() > 0.01
    log = comfy.server.log()
    assert "weight_dtype fp16: half precision is only used on a GPU" in log
    assert "gradient checkpointing on" in log


def test_head_channel_mismatch_is_a_clear_error(comfy, tiny_adm):
    prompt = {
        "1": {"class_type": "EquiRegLoadPixelDiffusionModel",
              "inputs": {"model_name": tiny_adm["safetensors"], "weight_dtype": "auto",
                         "gradient_checkpointing": False, "num_head_channels": 32}},
        "2": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 2,
                                                         "denoise": 1.0}},
        "3": {"class_type": "SamplerCustom", "inputs": {
            "model": ["1", 0], "add_noise": True, "noise_seed": 0, "cfg": 1.0, "positive": ["1", 1],
            "negative": ["1", 1], "sampler": ["4", 0], "sigmas": ["2", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["8", 0]}},
        "8": {"class_type": "EquiRegPixelSpaceVAE", "inputs": {}},
    }
    with pytest.raises(PromptFailed) as info:
        comfy.run(prompt, timeout=300)
    assert "set num_head_channels to 64" in str(info.value)
    prompt["1"]["inputs"]["num_head_channels"] = 64  # the server keeps working
    comfy.run(prompt, timeout=300)


# ---------------------------------------------------------------------------------------------------
# In-process checks (ComfyUI's modules imported here, CPU)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inproc(comfyui_path):
    import torch

    adm = _pack_module("nodes.adm")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread beats two contended ones
    yield adm
    torch.set_num_threads(before)


def test_inproc_model_is_a_comfy_eps_model_on_the_adm_schedule(inproc):
    import comfy.model_base
    import comfy.model_sampling
    import torch

    logic = _pack_module("nodes.adm_logic")
    models = _pack_module("samplers.models")
    net = random_adm(1)
    patcher = inproc.build_model_patcher(net)
    base = patcher.model
    assert isinstance(base, comfy.model_base.BaseModel) and base.model_type == comfy.model_base.ModelType.EPS
    ms = base.model_sampling
    assert isinstance(ms, comfy.model_sampling.EPS)
    assert isinstance(ms, comfy.model_sampling.ModelSamplingDiscrete)
    assert torch.equal(ms.sigmas, logic.schedule_sigmas().float())
    # A model_sampling rebuilt from the config (as the ModelSamplingDiscrete node does) is the same table.
    assert torch.equal(comfy.model_sampling.ModelSamplingDiscrete(base.model_config).sigmas, ms.sigmas)
    # BasicScheduler "normal" with 1000 steps (the example workflows) visits every timestep 999..0 of the
    # reference's DDPM loop, then 0.
    import comfy.samplers

    grid = comfy.samplers.calculate_sigmas(ms, "normal", 1000)
    assert grid.shape == (1001,) and grid[-1] == 0
    torch.testing.assert_close(grid[:-1].float(), ms.sigmas.flip(0), rtol=1e-6, atol=0)
    fmt = base.latent_format
    assert fmt.latent_channels == 3 and fmt.scale_factor == 1.0 and len(fmt.latent_rgb_factors) == 3
    z = torch.randn(2, 3, 5, 7)
    assert torch.equal(base.process_latent_in(z), z) and torch.equal(base.process_latent_out(z), z)
    assert patcher.model_dtype() == torch.float32

    denoiser = models.ADMDenoiser(net)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 5
    cond = torch.zeros(3, 1, 1)
    with torch.no_grad():
        sig = ms.sigmas[torch.tensor([0, 400, 999])]
        torch.testing.assert_close(base.apply_model(x, sig, c_crossattn=cond), denoiser(x, sig),
                                   rtol=1e-5, atol=1e-5)
        # Between table entries ComfyUI rounds to the nearest discrete timestep (for every model): the
        # result is the reference denoiser's formula at that integer timestep.
        sigma = torch.full((3,), 2.345)
        t = ms.timestep(sigma)
        s = sigma.view(-1, 1, 1, 1)
        eps = net(x / torch.sqrt(1 + s * s), t.float())[:, :3]
        torch.testing.assert_close(base.apply_model(x, sigma, c_crossattn=cond), x - s * eps,
                                   rtol=1e-5, atol=1e-5)


def test_inproc_pixel_vae_is_comfys_in_float32(inproc):
    import comfy.pixel_space_convert
    import comfy.sd
    import torch

    bridge = _pack_module("nodes.comfy_bridge")
    vae = inproc.pixel_space_vae()
    assert isinstance(vae, comfy.sd.VAE)
    assert isinstance(vae.first_stage_model, comfy.pixel_space_convert.PixelspaceConversionVAE)
    assert vae.vae_dtype == torch.float32 and vae.latent_channels == 3 and vae.output_channels == 3
    assert vae.spacial_compression_encode() == 1 and vae.spacial_compression_decode() == 1
    bridge.check_vae(vae)
    image = torch.rand(2, 9, 11, 3)
    latent = vae.encode(image)
    torch.testing.assert_close(latent, image.permute(0, 3, 1, 2) * 2 - 1, rtol=0, atol=1e-7)
    torch.testing.assert_close(vae.decode(latent), image, rtol=0, atol=1e-6)
    z = torch.randn(1, 3, 4, 4, dtype=torch.float64) * 0.3
    assert torch.equal(vae.first_stage_model.decode(z), z)  # the loss sees the estimate unrounded


@pytest.mark.parametrize("dtype_name", ["float32", "bfloat16"])
def test_inproc_posterior_sampling_through_the_bridge(inproc, dtype_name):
    """Built under inference mode (as ComfyUI's loaders run), the MODEL's weights are inference tensors;
    the Posterior Sampler's bridge converts them and DPS's gradient reaches the sample (a different
    step size gives a different result); the loss is float32 even with bfloat16 weights; a plain
    sampler still works on the converted model afterwards."""
    import comfy.sample
    import comfy.samplers
    import torch

    nlogic = _pack_module("nodes.logic")
    sampler_mod = _pack_module("nodes.sampler")
    dtype = getattr(torch, dtype_name)
    with torch.inference_mode():
        patcher = inproc.build_model_patcher(random_adm(2).to(dtype))
        assert all(p.is_inference() for p in patcher.model.parameters())
        vae = inproc.pixel_space_vae()
        cond = inproc.unconditional_conditioning()
        image = torch.rand(1, 16, 16, 3, generator=torch.Generator().manual_seed(4))
        spec = nlogic.operator_spec("super_resolution", sr_factor="4", kernel_size=61, blur_sigma=3.0,
                                    motion_intensity=0.5, seed=0, mask_type="box", box_size=0,
                                    box_position="center", random_fraction=0.7, pr_oversample=2.0,
                                    hdr_scale=2.0, mask=None)
        measurement, _ = nlogic.simulate(image, spec, "gaussian", 0.05, 1.0, 0)
        latent, _ = nlogic.target_latent(measurement, 1, 3, "empty")
        sigmas = comfy.samplers.calculate_sigmas(patcher.model.model_sampling, "normal", 4)
        noise = comfy.sample.prepare_noise(latent, 0)
        outs = []
        for step in (0.3, 3.0):
            options = sampler_mod.options_for("dps", {"dps_step_size": step, "dps_eta": 1.0})
            sampler = sampler_mod.make_sampler("dps", options, measurement, vae)
            outs.append(comfy.sample.sample_custom(patcher, noise, 1.0, sampler, sigmas, cond, cond, latent,
                                                   seed=0))
        assert not any(p.is_inference() for p in patcher.model.parameters())
        plain = comfy.sample.sample(patcher, noise, 3, 1.0, "euler", "normal", cond, cond, latent, seed=0)
    for out in (*outs, plain):
        assert out.shape == (1, 3, 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (outs[0] - outs[1]).abs().max() > 1e-3
