"""Every example workflow (``example_workflows/*.json`` except the ADM ones, which ``test_adm_nodes.py``
runs) end to end through the HTTP API of a real ComfyUI, on the tiny random-weight SD1.5 checkpoint.

Each UI-format file is converted to an API prompt (``workflow_api.ui_to_api``, checked against the real
frontend's ``graphToPrompt`` in ``test_frontend.py``) and shrunk: 128 px target images, 4 steps, noiseless
measurements, short inner optimisations, the tiny checkpoint, test images in the server's input folder.
Checked for each workflow:

- the file is still the API graph of ``make_example_workflows.py`` (regenerate after editing either);
- it runs; every decoded image is finite and not constant; Metrics reports finite numbers;
- the measurement residual ``||A(x) - y||`` of each posterior result is lower than that of the same graph
  with the posterior sampler replaced by Euler (the guider by CFGGuider): same seed, schedule and start;
- Cancel after step 2 of a 20-step run stops within a step (the inner loops of PSLD, ReSample and SITCOM
  check it too), and the server runs the next prompt;
- afterwards a plain KSampler on the same MODEL gives the image it gave before any example ran.

Partial denoising (0.5) from the VAE-encoded back-projection is used where the operator allows it: from
pure noise the random model's estimates drive TAESD's input tanh into saturation and the guidance has no
gradient left to act on (phase retrieval has no back-projection and starts from noise).
"""

from __future__ import annotations

import copy
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # pack_import
sys.path.insert(0, str(HERE))
from conftest import ComfyClient, synthetic_image  # noqa: E402
from pack_import import pack_module  # noqa: E402
from workflow_api import ui_to_api  # noqa: E402

EXAMPLES = sorted(p for p in (REPO_ROOT / "example_workflows").glob("*.json")
                  if not p.name.startswith("adm_"))
NAMES = [p.stem for p in EXAMPLES]

SIZE = 128  # target image size (the examples use 512)
STEPS = 4
DENOISE = 0.5
#: Solver options shrunk so that a run takes seconds on two CPU cores.
SMALL_SOLVER_OPTIONS = {
    "resample_interval": 2,
    "resample_inter_steps": 1,
    "resample_pixel_iters": 20,
    "resample_latent_iters": 10,
    "sitcom_inner_steps": 4,
    "sitcom_lr": 0.05,
    "sitcom_equi_steps": 2,
    "daps_langevin_steps": 3,
    "daps_ode_steps": 2,
    "dps_step_size": 3.0,
    "psld_omega": 1.0,
}
MASK_BOX = (40, 88)  # rows/columns [40, 88) of the test mask are missing

logic = pack_module("nodes.logic")


# ---------------------------------------------------------------------------------------------------
# Graph surgery
# ---------------------------------------------------------------------------------------------------


def consumers(prompt: dict, node_id: str, slot: int) -> list[tuple[str, str]]:
    """(node id, input name) of every input fed by output ``slot`` of ``node_id``."""
    return [(k, name) for k, node in prompt.items() for name, value in node["inputs"].items()
            if isinstance(value, list) and value == [node_id, slot]]


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return sorted((k for k, n in prompt.items() if n["class_type"] == class_type), key=int)


def upstream(prompt: dict, node_id: str, class_type: str) -> str:
    """The nearest node of ``class_type`` feeding ``node_id`` (depth first)."""
    seen, stack = set(), [node_id]
    while stack:
        k = stack.pop()
        for value in prompt[k]["inputs"].values():
            if isinstance(value, list):
                src = value[0]
                if prompt[src]["class_type"] == class_type:
                    return src
                if src not in seen:
                    seen.add(src)
                    stack.append(src)
    raise AssertionError(f"no {class_type} upstream of node {node_id}")


def measurement_node(prompt: dict) -> str:
    ids = nodes_of(prompt, "EquiRegSimulateMeasurement") + nodes_of(prompt, "EquiRegMeasurementFromImage")
    assert len(ids) == 1, f"expected one measurement node, found {ids}"
    return ids[0]


def shrink(prompt: dict, name: str, checkpoint: str, images: dict[str, str], steps: int = STEPS) -> dict:
    """The example's prompt at test size; ``images`` maps 'clean'/'masked' to input file names (SIZE px)
    and 'low' to the low-resolution photo for Measurement from Image."""
    g = copy.deepcopy(prompt)
    meas = measurement_node(g)
    operator = g[upstream(g, meas, "EquiRegOperator")]["inputs"]["operator"]
    for k, node in g.items():
        ct, inputs = node["class_type"], node["inputs"]
        if ct == "CheckpointLoaderSimple":
            inputs["ckpt_name"] = checkpoint
        elif ct == "LoadImage":
            direct = [c for c, _ in consumers(g, k, 0)]
            reached = direct + [c2 for c in direct for c2, _ in consumers(g, c, 0)]  # through ImageScale
            feeds_from_image = any(g[c]["class_type"] == "EquiRegMeasurementFromImage" for c in reached)
            if consumers(g, k, 1):  # the MASK output is used: an image with a painted (transparent) area
                inputs["image"] = images["masked"]
            elif feeds_from_image and operator == "super_resolution":
                inputs["image"] = images["low"]
            else:
                inputs["image"] = images["clean"]
        elif ct == "ImageScale":
            inputs["width"] = inputs["height"] = SIZE * inputs["width"] // 512
        elif ct in ("EquiRegSimulateMeasurement", "EquiRegMeasurementFromImage"):
            inputs["noise"] = "none"  # y = A(clean) exactly for Simulate
        elif ct == "BasicScheduler":
            inputs["steps"] = steps
            inputs["denoise"] = DENOISE
        elif ct == "EquiRegTargetLatent":
            inputs["init"] = "empty" if operator == "phase_retrieval" else "measurement"
        elif ct == "EquiRegPosteriorSampler":
            inputs.update(SMALL_SOLVER_OPTIONS)
        elif ct == "SaveImage":
            inputs["filename_prefix"] = f"eqwf_{name}_{k}"
        elif ct == "EquiRegPosteriorGuider":
            inputs["step_size"] = 3.0
    # save every decoded image (each restoration separately)
    for k in nodes_of(g, "VAEDecode"):
        g[f"{k}9001"] = {"class_type": "SaveImage",
                         "inputs": {"images": [k, 0], "filename_prefix": f"eqwf_{name}_dec{k}"}}
    return g


#: Posterior Sampler settings that switch the measurement (and EquiReg) off but keep the sampler: DPS is
#: then its ancestral DDIM step (the same noise draws), PSLD its deterministic DDIM step.
GUIDANCE_OFF = {"dps": {"dps_step_size": 1e-9}, "psld": {"psld_gamma": 0.0, "psld_omega": 0.0}}


def unconditional(prompt: dict) -> dict:
    """The same graph with the measurement taken out of sampling (same model, conditioning, cfg, seed,
    schedule and start): DPS and PSLD with their guidance off, Euler instead of ReSample and SITCOM
    (their data consistency has no off switch), CFGGuider instead of the Posterior Guider."""
    g = copy.deepcopy(prompt)
    for k, node in g.items():
        if node["class_type"] == "EquiRegPosteriorSampler":
            solver = node["inputs"]["solver"]
            if solver in GUIDANCE_OFF:
                node["inputs"].update(GUIDANCE_OFF[solver])
                node["inputs"].pop("equireg", None)
            else:
                g[k] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
        elif node["class_type"] == "EquiRegPosteriorGuider":
            i = node["inputs"]
            g[k] = {"class_type": "CFGGuider",
                    "inputs": {key: i[key] for key in ("model", "positive", "negative", "cfg")}}
        elif node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] += "_uncond"
    return g


# ---------------------------------------------------------------------------------------------------
# Measurements, residuals
# ---------------------------------------------------------------------------------------------------


def to_core(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> (1, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array[..., :3])).permute(2, 0, 1)[None].float() * 2 - 1


def measurement_of(prompt: dict, arrays: dict[str, np.ndarray]):
    """(operator, y) that the shrunk prompt's measurement node builds, computed with the pack's own
    functions from the test images (noise is off)."""
    meas = measurement_node(prompt)
    op_inputs = dict(prompt[upstream(prompt, meas, "EquiRegOperator")]["inputs"])
    name = op_inputs.pop("operator")
    if op_inputs.pop("mask", None) is not None:  # LoadImage's MASK: 1 - alpha
        op_inputs["mask"] = torch.from_numpy(1.0 - arrays["masked"][..., 3])[None].float()
    spec = logic.operator_spec(name, **op_inputs)
    src = prompt[upstream(prompt, meas, "LoadImage")]["inputs"]["image"]
    image = arrays[src]
    if prompt[meas]["class_type"] == "EquiRegSimulateMeasurement":
        op = spec.build((SIZE, SIZE))
        with torch.no_grad():
            return op, op(to_core(image))
    target = logic.target_size_from_measurement(spec, image.shape[:2])
    return spec.build(target), to_core(image)


def residual(op, y: torch.Tensor, restored: np.ndarray) -> float:
    with torch.no_grad():
        return float((op(to_core(restored)) - y).norm())


# ---------------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def test_images(comfy: ComfyClient) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Input files (role -> name) and the arrays LoadImage will produce (name -> (H, W, C) in [0, 1])."""
    from PIL import Image

    clean = synthetic_image(SIZE, SIZE, seed=3)
    low = synthetic_image(SIZE // 4, SIZE // 4, seed=4)
    names = {"clean": comfy.put_input_image("eqwf_clean.png", clean),
             "low": comfy.put_input_image("eqwf_low.png", low)}
    rgba = np.concatenate([clean, np.ones_like(clean[..., :1])], axis=-1)
    a, b = MASK_BOX
    rgba[a:b, a:b, 3] = 0.0  # transparent = painted in the mask editor = missing
    Image.fromarray(np.round(rgba * 255).astype(np.uint8), mode="RGBA").save(
        comfy.server.input_dir / "eqwf_masked.png")
    names["masked"] = "eqwf_masked.png"
    arrays = {}
    for name in names.values():
        with Image.open(comfy.server.input_dir / name) as im:
            arrays[name] = np.asarray(im, dtype=np.float32) / 255.0
    arrays["masked"] = arrays["eqwf_masked.png"]
    return names, arrays


@pytest.fixture(scope="module")
def examples(comfy: ComfyClient) -> dict[str, dict]:
    """name -> API prompt of the committed UI file (converted as the frontend does)."""
    return {p.stem: ui_to_api(json.loads(p.read_text()), comfy.object_info) for p in EXAMPLES}


def ksampler_graph(checkpoint: str, cfg: float, prefix: str) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 11, "steps": 3, "cfg": cfg,
                                                   "sampler_name": "dpmpp_2m", "scheduler": "karras",
                                                   "positive": ["2", 0], "negative": ["3", 0],
                                                   "latent_image": ["4", 0], "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": prefix}},
    }


@pytest.fixture(scope="module")
def ksampler_before(comfy: ComfyClient, tiny_checkpoint: str) -> np.ndarray:
    """A plain KSampler image on the checkpoint's MODEL before any example workflow ran."""
    return comfy.output_images(comfy.run(ksampler_graph(tiny_checkpoint, 4.0, "eqwf_ks_before")), "7")[0]


# ---------------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------------


def test_there_is_an_example_per_task():
    expected = {"sr4_dps_equireg_sd15", "inpainting_mask_psld_equireg", "gaussian_deblur_resample",
                "motion_deblur_sitcom", "phase_retrieval_dps", "research_compare_equireg_metrics",
                "guider_dpmpp_2m"}
    assert expected <= set(NAMES), sorted(expected - set(NAMES))


@pytest.mark.parametrize("name", NAMES)
def test_example_is_its_generated_api_graph(comfy, examples, name):
    import make_example_workflows as gen

    assert examples[name] == gen.build(name, comfy.object_info).api, (
        f"example_workflows/{name}.json differs from make_example_workflows.{name}(); regenerate it with "
        "tests/integration/make_example_workflows.py")


def _decoded(comfy: ComfyClient, entry: dict, prompt: dict) -> dict[str, np.ndarray]:
    """VAEDecode node id -> its (first) decoded image."""
    return {k: comfy.output_images(entry, f"{k}9001")[0] for k in nodes_of(prompt, "VAEDecode")}


def _metrics_numbers(entry: dict, prompt: dict) -> list[float]:
    numbers = []
    for k in nodes_of(prompt, "EquiRegMetrics"):
        (text,) = ComfyClient.node_output(entry, k)["text"]
        found = [float(v.rstrip(",")) for v in re.findall(r"(?:PSNR|SSIM) (\S+)", text)]
        assert found, text
        numbers += found
    return numbers


@pytest.mark.parametrize("name", NAMES)
def test_example_runs_and_its_posterior_fits_the_measurement(comfy, tiny_checkpoint, test_images, examples,
                                                             ksampler_before, name):
    names, arrays = test_images
    prompt = shrink(examples[name], name, tiny_checkpoint, names)
    entry = comfy.run(prompt)
    restored = _decoded(comfy, entry, prompt)
    assert restored
    for k, img in restored.items():
        assert np.isfinite(img).all() and img.std() > 1e-3, f"VAEDecode {k}: constant or non-finite image"
    numbers = _metrics_numbers(entry, prompt)
    assert all(math.isfinite(v) for v in numbers), numbers

    op, y = measurement_of(prompt, arrays)
    _check_measurement_view(comfy, entry, prompt, y)
    plain_prompt = unconditional(prompt)
    plain = _decoded(comfy, comfy.run(plain_prompt), plain_prompt)
    for k, img in restored.items():
        r_post, r_plain = residual(op, y, img), residual(op, y, plain[k])
        print(f"{name}: VAEDecode {k}: residual {r_post:.4g} (posterior) vs {r_plain:.4g} (unconditional)")
        # at least 2 % lower: the smallest margin seen was 5 % (phase retrieval), most are 6-16 %
        assert r_post < 0.98 * r_plain, (f"{name}, VAEDecode {k}: residual {r_post:.4g} is not below the "
                                         f"unconditional run's {r_plain:.4g}")


def _check_measurement_view(comfy: ComfyClient, entry: dict, prompt: dict, y: torch.Tensor) -> None:
    """The residual is only meaningful against the measurement the nodes built: where the workflow shows
    the measurement (Simulate Measurement's image, y itself or y enlarged by nearest neighbour), it must
    equal the y computed here from the test image."""
    meas = measurement_node(prompt)
    views = [k for k, name in consumers(prompt, meas, 1) if prompt[k]["class_type"] == "PreviewImage"]
    operator = prompt[upstream(prompt, meas, "EquiRegOperator")]["inputs"]["operator"]
    if not views or operator == "phase_retrieval":  # phase retrieval shows a log-magnitude spectrum
        return
    shown = to_core(comfy.output_images(entry, views[0])[0])
    expected = y.clamp(-1, 1)
    if tuple(expected.shape[-2:]) != tuple(shown.shape[-2:]):
        f = shown.shape[-1] // expected.shape[-1]
        expected = expected.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)
    assert float((shown - expected).abs().max()) <= 2.5 / 255, "the measurement differs from the nodes' one"


def _sampling_nodes(prompt: dict) -> set[str]:
    return set(nodes_of(prompt, "SamplerCustom") + nodes_of(prompt, "SamplerCustomAdvanced"))


@pytest.mark.parametrize("name", NAMES)
def test_cancel_after_step_2_stops_within_a_step(comfy, tiny_checkpoint, test_images, examples, name):
    names, _ = test_images
    prompt = shrink(examples[name], name, tiny_checkpoint, names, steps=20)
    for k in nodes_of(prompt, "SaveImage"):
        prompt[k]["inputs"]["filename_prefix"] += "_cancel"
    entry, seen = comfy.run_and_interrupt(prompt, after_progress=2)
    kinds = [m["type"] for m in seen]
    assert "execution_interrupted" in kinds or ComfyClient.messages(entry, "execution_interrupted"), kinds
    samplers = _sampling_nodes(prompt)
    values = [m["data"]["value"] for m in seen
              if m["type"] == "progress" and str(m["data"].get("node")) in samplers]
    assert values and max(values) <= 4, values  # Cancel at 2 takes effect at the next model evaluation
    assert max(m["data"]["max"] for m in seen if m["type"] == "progress"
               and str(m["data"].get("node")) in samplers) == 20


def test_plain_ksampler_on_the_same_model_after_the_examples(comfy, tiny_checkpoint, ksampler_before):
    # cfg differs by 1e-6 only, so that ComfyUI does not return its cached result
    entry = comfy.run(ksampler_graph(tiny_checkpoint, 4.0 + 1e-6, "eqwf_ks_after"))
    after = comfy.output_images(entry, "7")[0]
    assert np.isfinite(after).all()
    assert np.abs(after - ksampler_before).max() <= 2.0 / 255
