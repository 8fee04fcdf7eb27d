"""Posterior Sampler, Posterior Guider, EquiReg Regularizer and Equivariance Error inside a real ComfyUI
server (HTTP API), with the tiny random-weight SD1.5 checkpoint (TAESD VAE) at 64 x 64 pixels.

What is checked:
- gradients flow through CFG + UNet + process_latent_out + TAESD decode (in-process check in a
  subprocess that loads the checkpoint under inference mode, as ComfyUI's executor does, and also shows
  that without the weight conversion autograd refuses);
- the DPS sampler with a vanishing step reproduces the Euler sampler from the same seed (noise space,
  scaling and step are right), and with a real step its measurement residual is lower than Euler's;
- the same for the guider inside dpmpp_2m;
- a batch with per-image measurements behaves like separate runs;
- Cancel after step 2 stops within a step; a plain KSampler on the same MODEL afterwards gives the same
  image as before; a run on a LoRA-patched model works;
- bad inputs give errors naming the input and the server keeps running; flash/sage attention gives an
  error naming --use-pytorch-cross-attention.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests"))  # pack_import
from conftest import ComfyClient, PromptFailed, synthetic_image  # noqa: E402
from pack_import import pack_module  # noqa: E402

operators = pack_module("samplers.operators")

SIZE = 64
SR_FACTOR = 4
STEPS = 4
SEED = 1234
CFG = 5.0
# Partial denoising from the VAE-encoded back-projection: the tiny model is random, so from pure noise its
# x0 estimates grow until the TAESD decoder's input tanh saturates and no gradient is left; started
# here, the decoder stays responsive and the guidance has something to act on.
DENOISE = 0.5
ZETA = 3.0
OPERATOR_DEFAULTS = {
    "operator": "super_resolution", "sr_factor": str(SR_FACTOR), "kernel_size": 61, "blur_sigma": 3.0,
    "motion_intensity": 0.5, "seed": 0, "mask_type": "box", "box_size": 0, "box_position": "center",
    "random_fraction": 0.7, "pr_oversample": 2.0, "hdr_scale": 2.0,
}


# ---------------------------------------------------------------------------------------------------
# Graph helpers
# ---------------------------------------------------------------------------------------------------


def widget_defaults(comfy: ComfyClient, class_type: str) -> dict:
    """Default values of every widget input of a node, from the server's /object_info."""
    info = comfy.object_info[class_type]["input"]
    out = {}
    for section in ("required", "optional"):
        for name, spec in info.get(section, {}).items():
            kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
            if isinstance(kind, list):
                out[name] = opts.get("default", kind[0])
            elif kind == "COMBO":
                out[name] = opts.get("default", opts.get("options", [None])[0])
            elif kind in ("INT", "FLOAT", "BOOLEAN", "STRING") and "default" in opts:
                out[name] = opts["default"]
    return out


def posterior_sampler_node(comfy: ComfyClient, solver: str = "dps", equireg=None, **options) -> dict:
    inputs = widget_defaults(comfy, "EquiRegPosteriorSampler")
    inputs.update(solver=solver, measurement=["6", 0], vae=["1", 2], **options)
    if equireg is not None:
        inputs["equireg"] = equireg
    return {"class_type": "EquiRegPosteriorSampler", "inputs": inputs}


def base_graph(ckpt: str, images: list[str], prefix: str) -> dict:
    """Checkpoint, prompts, clean image(s) (a batch when several), SR x4 measurement without noise,
    target latent from the measurement, 4-step normal schedule at denoise 0.5, decode and save. Node "8"
    is the sampler slot."""
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "LoadImage", "inputs": {"image": images[0]}},
        "5": {"class_type": "EquiRegOperator", "inputs": dict(OPERATOR_DEFAULTS)},
        "6": {"class_type": "EquiRegSimulateMeasurement",
              "inputs": {"image": ["4", 0], "operator": ["5", 0], "noise": "none", "sigma": 0.05,
                         "poisson_rate": 1.0, "seed": 0}},
        "7": {"class_type": "EquiRegTargetLatent", "inputs": {"measurement": ["6", 0], "vae": ["1", 2],
                                                               "init": "measurement"}},
        "9": {"class_type": "BasicScheduler",
              "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": STEPS, "denoise": DENOISE}},
        "10": {"class_type": "SamplerCustom",
               "inputs": {"model": ["1", 0], "add_noise": True, "noise_seed": SEED, "cfg": CFG,
                          "positive": ["2", 0], "negative": ["3", 0], "sampler": ["8", 0], "sigmas": ["9", 0],
                          "latent_image": ["7", 0]}},
        "11": {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}},
        "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": prefix}},
    }
    if len(images) == 2:
        g["4b"] = {"class_type": "LoadImage", "inputs": {"image": images[1]}}
        g["4c"] = {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["4b", 0]}}
        g["6"]["inputs"]["image"] = ["4c", 0]
    return g


def with_euler(g: dict) -> dict:
    g["8"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    return g


def guided_graph(ckpt: str, image: str, prefix: str, guider: dict, sampler: str = "dpmpp_2m") -> dict:
    g = base_graph(ckpt, [image], prefix)
    del g["10"]
    g["8"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}}
    g["9"]["inputs"]["scheduler"] = "karras"
    g["13"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}}
    g["14"] = guider
    g["10"] = {"class_type": "SamplerCustomAdvanced",
               "inputs": {"noise": ["13", 0], "guider": ["14", 0], "sampler": ["8", 0], "sigmas": ["9", 0],
                          "latent_image": ["7", 0]}}
    return g


def posterior_guider_node(step_size: float, equireg=None) -> dict:
    inputs = {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": CFG,
              "measurement": ["6", 0], "vae": ["1", 2], "step_size": step_size}
    if equireg is not None:
        inputs["equireg"] = equireg
    return {"class_type": "EquiRegPosteriorGuider", "inputs": inputs}


def cfg_guider_node() -> dict:
    return {"class_type": "CFGGuider",
            "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "cfg": CFG}}


def regularizer_node(comfy: ComfyClient, **params) -> dict:
    inputs = widget_defaults(comfy, "EquiRegRegularizer")
    inputs.update(vae=["1", 2], **params)
    return {"class_type": "EquiRegRegularizer", "inputs": inputs}


# ---------------------------------------------------------------------------------------------------
# Images and the measurement residual
# ---------------------------------------------------------------------------------------------------


def to_core(array: np.ndarray) -> torch.Tensor:
    """(H, W, 3) in [0, 1] -> (1, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None].float() * 2 - 1


def residual(restored: np.ndarray, clean: np.ndarray) -> float:
    """||A(x_restored) - y|| with y = A(x_clean) (the measurement is noiseless), on the [-1, 1] scale."""
    op = operators.make("super_resolution", factor=SR_FACTOR, image_size=(SIZE, SIZE))
    with torch.no_grad():
        return float((op(to_core(restored)) - op(to_core(clean))).norm())


@pytest.fixture(scope="module")
def photos(comfy: ComfyClient) -> dict[str, np.ndarray]:
    """Two clean pictures in the server's input folder; name -> the array LoadImage will produce."""
    from PIL import Image

    out = {}
    for seed in (1, 2):
        name = comfy.put_input_image(f"equireg_sampling_{seed}.png", synthetic_image(SIZE, SIZE, seed=seed))
        pixels = Image.open(comfy.server.input_dir / name).convert("RGB")
        out[name] = np.asarray(pixels, dtype=np.float32) / 255
    return out


def run_images(comfy: ComfyClient, prompt: dict, node: str = "12") -> list[np.ndarray]:
    return comfy.output_images(comfy.run(prompt), node)


# ---------------------------------------------------------------------------------------------------
# In-process checks (subprocess with ComfyUI's Python, checkpoint loaded under inference mode)
# ---------------------------------------------------------------------------------------------------

_INPROCESS_PRELUDE = """
import importlib.util, json, os, sys
sys.path.insert(0, os.getcwd())
import comfy.cli_args
comfy.cli_args.args.cpu = True
comfy.cli_args.args.use_pytorch_cross_attention = True
import torch
torch.set_num_threads(2)
import nodes as comfy_nodes
import comfy.samplers
spec = importlib.util.spec_from_file_location("equireg_inproc", {root!r} + "/__init__.py",
                                              submodule_search_locations=[{root!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules["equireg_inproc"] = pack
spec.loader.exec_module(pack)
from equireg_inproc.nodes import comfy_bridge as bridge
with torch.inference_mode():  # as ComfyUI's executor: loader weights become inference tensors
    model, clip, vae = comfy_nodes.CheckpointLoaderSimple().load_checkpoint({ckpt!r})[:3]
    pos = comfy_nodes.CLIPTextEncode().encode(clip, "a photo")[0]
    neg = comfy_nodes.CLIPTextEncode().encode(clip, "")[0]
"""


def run_inprocess(comfyui_path: Path, ckpt: str, body: str, timeout: float = 300) -> dict:
    """Run ``body`` after the prelude in ComfyUI's Python; it must print one JSON line last."""
    code = _INPROCESS_PRELUDE.format(root=str(REPO_ROOT), ckpt=ckpt) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], cwd=comfyui_path, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if proc.returncode != 0:
        raise AssertionError(f"in-process check failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_gradient_flows_through_cfg_unet_latent_out_and_taesd(comfyui_path, tiny_checkpoint):
    result = run_inprocess(comfyui_path, tiny_checkpoint, """
    from comfy_extras.nodes_custom_sampler import SamplerCustom

    def loss_grad(cfg, convert):
        # A sampler function run by ComfyUI's own SamplerCustom -> CFGGuider -> KSAMPLER path: one
        # differentiable evaluation of CFG + UNet + process_latent_out + TAESD decode at sigma 3.
        rec = {}

        def fn(m, x, sigmas, extra_args=None, callback=None, disable=None):
            base = m.inner_model.inner_model
            if convert:
                rec["converted"] = bridge.make_differentiable(base, vae)
                rec["converted_again"] = bridge.make_differentiable(base, vae)
            codec = bridge.VaeCodec(base, vae)
            with torch.inference_mode(False), torch.enable_grad():
                leaf = x.detach().clone().requires_grad_(True)
                try:
                    denoised = m(leaf, sigmas[0].clone() * leaf.new_ones([1]), **extra_args)
                    img = codec.decode(denoised)
                    (g,) = torch.autograd.grad(img.square().sum(), leaf)
                    rec.update(grad_norm=float(g.norm()), finite=bool(torch.isfinite(g).all()),
                               img_shape=list(img.shape), grad=g.detach().clone())
                except RuntimeError as e:
                    rec["error"] = str(e)[:300]
            return x

        SamplerCustom().sample(model, True, 0, cfg, pos, neg, comfy.samplers.KSAMPLER(fn),
                               torch.tensor([3.0, 0.0]), {"samples": torch.zeros(1, 4, 8, 8)})
        return rec

    def ksampler():
        return comfy_nodes.KSampler().sample(model, 3, 2, 5.0, "euler", "normal", pos, neg,
                                             {"samples": torch.zeros(1, 4, 8, 8)})[0]["samples"]

    with torch.inference_mode():
        k_before = ksampler()
        inference_before = sum(p.is_inference() for p in model.model.parameters())
        before = loss_grad(5.0, convert=False)  # weights still inference tensors: autograd refuses
        cfg5 = loss_grad(5.0, convert=True)
        cfg1 = loss_grad(1.0, convert=True)
        k_after = ksampler()  # plain sampling on the converted weights gives what it gave before
    g5, g1 = cfg5.pop("grad", None), cfg1.pop("grad", None)
    print(json.dumps({
        "before": before, "cfg5": cfg5, "cfg1": cfg1, "inference_before": int(inference_before),
        "cfg_changes_grad": float((g5 - g1).norm()) if g5 is not None and g1 is not None else None,
        "ksampler_finite": bool(torch.isfinite(k_after).all()),
        "ksampler_change": float((k_after - k_before).abs().max())}))
    """)
    assert result["inference_before"] > 0, "the loader should have built inference-tensor weights"
    assert "Inference tensors" in result["before"].get("error", ""), result["before"]
    assert result["cfg5"]["converted"] > 0 and result["cfg5"]["converted_again"] == 0
    for key in ("cfg5", "cfg1"):
        assert result[key]["finite"] and result[key]["grad_norm"] > 0, result[key]
        assert result[key]["img_shape"] == [1, 3, 64, 64]
    # the cfg=5 graph contains the unconditional branch too: its gradient differs from cond-only
    assert result["cfg_changes_grad"] > 1e-6 * result["cfg5"]["grad_norm"]
    assert result["ksampler_finite"] and result["ksampler_change"] == 0.0


def test_flash_or_sage_attention_gives_a_clear_error(comfyui_path, tiny_checkpoint):
    result = run_inprocess(comfyui_path, tiny_checkpoint, """
    out = {}
    for attr in ("use_flash_attention", "use_sage_attention"):
        setattr(comfy.cli_args.args, attr, True)
        try:
            bridge.check_attention_backend()
            out[attr] = "no error"
        except RuntimeError as e:
            out[attr] = str(e)
        setattr(comfy.cli_args.args, attr, False)
    bridge.check_attention_backend()
    print(json.dumps(out))
    """)
    for attr, flag in (("use_flash_attention", "--use-flash-attention"), ("use_sage_attention",
                                                                         "--use-sage-attention")):
        assert "--use-pytorch-cross-attention" in result[attr] and flag in result[attr], result[attr]


# ---------------------------------------------------------------------------------------------------
# Through the server
# ---------------------------------------------------------------------------------------------------


def test_dps_sampler_matches_euler_without_guidance_and_lowers_the_residual(comfy, tiny_checkpoint, photos):
    name, clean = next(iter(photos.items()))
    euler = run_images(comfy, with_euler(base_graph(tiny_checkpoint, [name], "eq_euler")))[0]

    # eta 0 and a vanishing step: DPS's trajectory is Euler's (same seed, noise space and scaling)
    g = base_graph(tiny_checkpoint, [name], "eq_dps_tiny")
    g["8"] = posterior_sampler_node(comfy, dps_step_size=1e-9, dps_eta=0.0)
    tiny = run_images(comfy, g)[0]
    assert np.abs(tiny - euler).max() <= 2.0 / 255

    g = base_graph(tiny_checkpoint, [name], "eq_dps")
    g["8"] = posterior_sampler_node(comfy, dps_step_size=ZETA, dps_eta=0.0)
    dps = run_images(comfy, g)[0]
    assert np.isfinite(dps).all()
    r_dps, r_euler = residual(dps, clean), residual(euler, clean)
    assert r_dps < 0.95 * r_euler, (r_dps, r_euler)


def test_batch_with_per_image_measurements_behaves_like_separate_runs(comfy, tiny_checkpoint, photos):
    (n1, c1), (n2, c2) = photos.items()

    def graph(names: list[str], prefix: str, dps: bool) -> dict:
        g = base_graph(tiny_checkpoint, names, prefix)
        # One step: the random model is chaotic under large DPS steps (float round-off of a batched vs a
        # single convolution, ~1e-5, grows about tenfold per step), which would hide what is checked.
        g["9"]["inputs"]["steps"] = 1
        if dps:
            g["8"] = posterior_sampler_node(comfy, dps_step_size=ZETA, dps_eta=0.0)
            return g
        return with_euler(g)

    euler = run_images(comfy, graph([n1, n2], "eq_euler_batch", dps=False))
    batch = run_images(comfy, graph([n1, n2], "eq_dps_batch", dps=True))
    single = run_images(comfy, graph([n1], "eq_dps_single", dps=True))[0]
    assert len(batch) == 2 == len(euler)
    # image 0 of the batch has the initial noise of the single run (ComfyUI draws the batch's noise in
    # one go) and must not feel image 1's measurement: it equals the single run
    assert np.abs(batch[0] - single).max() <= 2.0 / 255
    # image 1 is pulled toward its own measurement
    assert residual(batch[1], c2) < residual(euler[1], c2)


def test_dps_with_equireg_and_ancestral_eta_runs(comfy, tiny_checkpoint, photos):
    name, _ = next(iter(photos.items()))
    g = base_graph(tiny_checkpoint, [name], "eq_dps_equireg")
    g["15"] = regularizer_node(comfy, source="vae_decoder", form="equi", alpha=0.5)
    g["9"]["inputs"]["steps"] = 2
    g["8"] = posterior_sampler_node(comfy, dps_step_size=1.0, dps_eta=1.0, equireg=["15", 0])
    first = run_images(comfy, g)[0]
    assert np.isfinite(first).all()
    # deterministic for a fixed seed on CPU: a changed-but-equivalent graph re-runs and repeats the image
    g["12"]["inputs"]["filename_prefix"] = "eq_dps_equireg_again"
    g["8"]["inputs"]["dps_step_size"] = 1.0 + 1e-12
    again = run_images(comfy, g)[0]
    assert np.abs(first - again).max() <= 1.0 / 255


def test_guider_in_dpmpp_2m_lowers_the_residual(comfy, tiny_checkpoint, photos):
    name, clean = next(iter(photos.items()))
    plain = run_images(comfy, guided_graph(tiny_checkpoint, name, "eq_cfg_2m", cfg_guider_node()))[0]
    guided = run_images(comfy, guided_graph(tiny_checkpoint, name, "eq_guided_2m",
                                            posterior_guider_node(ZETA)))[0]
    assert np.isfinite(guided).all()
    r_guided, r_plain = residual(guided, clean), residual(plain, clean)
    assert r_guided < 0.95 * r_plain, (r_guided, r_plain)


def test_interrupt_after_step_2_stops_within_a_step(comfy, tiny_checkpoint, photos):
    name, _ = next(iter(photos.items()))
    g = base_graph(tiny_checkpoint, [name], "eq_interrupt")
    g["8"] = posterior_sampler_node(comfy, dps_step_size=1.0)
    g["9"]["inputs"]["steps"] = 20
    entry, seen = comfy.run_and_interrupt(g, after_progress=2)
    kinds = [m["type"] for m in seen]
    assert "execution_interrupted" in kinds or ComfyClient.messages(entry, "execution_interrupted"), kinds
    values = [m["data"]["value"] for m in seen if m["type"] == "progress" and m["data"].get("node") == "10"]
    assert values and max(values) <= 4, values  # interrupt sent at 2; stops at the next model evaluation
    # the server keeps working
    g["9"]["inputs"]["steps"] = 2
    g["12"]["inputs"]["filename_prefix"] = "eq_after_interrupt"
    assert np.isfinite(run_images(comfy, g)[0]).all()


def test_plain_ksampler_on_the_same_model_after_posterior_sampling(comfy, tiny_checkpoint, photos):
    name, _ = next(iter(photos.items()))

    def ksampler_graph(cfg: float, prefix: str) -> dict:
        return {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a photo", "clip": ["1", 1]}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
            "20": {"class_type": "EmptyLatentImage",
                   "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
            "21": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "seed": 77, "steps": 3, "cfg": cfg,
                                                        "sampler_name": "euler", "scheduler": "normal",
                                                        "positive": ["2", 0], "negative": ["3", 0],
                                                        "latent_image": ["20", 0], "denoise": 1.0}},
            "22": {"class_type": "VAEDecode", "inputs": {"samples": ["21", 0], "vae": ["1", 2]}},
            "23": {"class_type": "SaveImage", "inputs": {"images": ["22", 0], "filename_prefix": prefix}},
        }

    before = run_images(comfy, ksampler_graph(5.0, "eq_ks_before"), "23")[0]
    g = base_graph(tiny_checkpoint, [name], "eq_between")
    g["8"] = posterior_sampler_node(comfy, dps_step_size=3.0)
    g["9"]["inputs"]["steps"] = 2
    run_images(comfy, g)
    # cfg differs by 1e-6 only so that ComfyUI does not return its cached result
    after = run_images(comfy, ksampler_graph(5.0 + 1e-6, "eq_ks_after"), "23")[0]
    assert np.isfinite(after).all()
    assert np.abs(after - before).max() <= 2.0 / 255


@pytest.fixture(scope="module")
def lora_name(comfyui_path: Path, tiny_checkpoint: str) -> str:
    """A small deterministic LoRA (generic ``diffusion_model.<module>.lora_up/down`` keys) on every
    attention projection of the tiny UNet, written next to the checkpoint (models/loras)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    name = "equireg_test_lora.safetensors"
    target = comfyui_path / "models" / "loras" / name
    if target.exists():
        return name
    target.parent.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(5)
    tensors = {}
    with safe_open(str(comfyui_path / "models" / "checkpoints" / tiny_checkpoint), framework="pt") as f:
        for key in f.keys():
            if not key.startswith("model.diffusion_model.") or not key.endswith(".weight"):
                continue
            if not any(p in key for p in (".to_q.", ".to_k.", ".to_v.", ".to_out.0.")):
                continue
            out_f, in_f = f.get_slice(key).get_shape()
            base = key[len("model."):-len(".weight")]
            tensors[f"{base}.lora_down.weight"] = torch.randn(4, in_f, generator=g) * 0.05
            tensors[f"{base}.lora_up.weight"] = torch.randn(out_f, 4, generator=g) * 0.05
    assert tensors, "no attention projections found in the tiny checkpoint"
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    save_file(tensors, str(tmp))
    os.replace(tmp, target)
    return name


def test_run_after_a_lora_patch(comfy, tiny_checkpoint, photos, lora_name):
    name, clean = next(iter(photos.items()))
    g = base_graph(tiny_checkpoint, [name], "eq_lora_euler")
    g["30"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": lora_name,
                                                               "strength_model": 1.0}}
    for node in ("9", "10"):
        g[node]["inputs"]["model"] = ["30", 0]
    euler = run_images(comfy, with_euler(g))[0]
    g["8"] = posterior_sampler_node(comfy, dps_step_size=ZETA, dps_eta=0.0)
    g["12"]["inputs"]["filename_prefix"] = "eq_lora_dps"
    dps = run_images(comfy, g)[0]
    assert np.isfinite(dps).all()
    assert residual(dps, clean) < residual(euler, clean)
    # the guider on the LoRA model too
    gg = guided_graph(tiny_checkpoint, name, "eq_lora_guided", posterior_guider_node(ZETA), sampler="euler")
    gg["30"] = g["30"]
    gg["9"]["inputs"]["model"] = ["30", 0]
    gg["14"]["inputs"]["model"] = ["30", 0]
    assert np.isfinite(run_images(comfy, gg)[0]).all()


@pytest.fixture(scope="module")
def mpe_file(comfyui_path: Path) -> str:
    """A small seeded SmallCNN MPE network in models/equireg (the folder the Regularizer node lists)."""
    equireg = pack_module("samplers.equireg")
    name = "equireg_test_mpe.safetensors"
    target = comfyui_path / "models" / "equireg" / name
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(3)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        equireg.save_mpe_cnn(equireg.SmallCNN(base_channels=8, num_blocks=2), tmp)
        os.replace(tmp, target)
    return name


def test_every_solver_and_mpe_source_runs(comfy, tiny_checkpoint, photos, mpe_file):
    """One prompt, one branch per solver (small iteration counts), each with another EquiReg source."""
    name, _ = next(iter(photos.items()))
    g = base_graph(tiny_checkpoint, [name], "eq_unused")
    for node in ("10", "11", "12"):
        del g[node]
    g["9"]["inputs"]["steps"] = 2
    cases = {
        "dps": ({"source": "file", "mpe_file": mpe_file}, {}),
        "psld": ({"source": "vae_decoder"}, {}),
        "resample": ({"source": "vae_encoder"}, {"resample_pixel_iters": 3, "resample_latent_iters": 3,
                                                 "resample_interval": 1}),
        "sitcom": ({"source": "vae_encoder_after_decoder", "form": "equicon"},
                   {"sitcom_inner_steps": 2, "sitcom_equi_steps": 2}),
        "daps": (None, {"daps_langevin_steps": 2, "daps_ode_steps": 2}),
    }
    for i, (solver, (reg, options)) in enumerate(cases.items()):
        ids = [f"{n}{i}" for n in ("reg", "smp", "run", "dec", "save")]
        equireg = None
        if reg is not None:
            g[ids[0]] = regularizer_node(comfy, alpha=0.1, **reg)
            equireg = [ids[0], 0]
        g[ids[1]] = posterior_sampler_node(comfy, solver=solver, equireg=equireg, **options)
        g[ids[2]] = {"class_type": "SamplerCustom",
                     "inputs": {"model": ["1", 0], "add_noise": True, "noise_seed": SEED, "cfg": CFG,
                                "positive": ["2", 0], "negative": ["3", 0], "sampler": [ids[1], 0],
                                "sigmas": ["9", 0], "latent_image": ["7", 0]}}
        g[ids[3]] = {"class_type": "VAEDecode", "inputs": {"samples": [ids[2], 0], "vae": ["1", 2]}}
        g[ids[4]] = {"class_type": "SaveImage",
                     "inputs": {"images": [ids[3], 0], "filename_prefix": f"eq_{solver}"}}
    entry = comfy.run(g)
    for i, solver in enumerate(cases):
        (image,) = comfy.output_images(entry, f"save{i}")
        assert image.shape == (SIZE, SIZE, 3) and np.isfinite(image).all(), solver


def test_equivariance_error_node(comfy, tiny_checkpoint, photos):
    name, _ = next(iter(photos.items()))
    g = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint}},
        "4": {"class_type": "LoadImage", "inputs": {"image": name}},
        "4b": {"class_type": "ImageBatch", "inputs": {"image1": ["4", 0], "image2": ["4", 0]}},
        "15": regularizer_node(comfy, source="vae_encoder_after_decoder", form="equicon", group="rot90"),
        "16": {"class_type": "EquiRegEquivarianceError",
               "inputs": {"image": ["4b", 0], "equireg": ["15", 0]}},
        "17": {"class_type": "SaveImage", "inputs": {"images": ["16", 2], "filename_prefix": "eq_heat"}},
    }
    entry = comfy.run(g)
    (text,) = comfy.node_output(entry, "16")["text"]
    values = [float(line.split(":")[1]) for line in text.splitlines()[1:]]
    assert len(values) == 2 and all(np.isfinite(values)) and values[0] > 0
    assert values[0] == pytest.approx(values[1], rel=1e-5)  # the same image twice
    heat = comfy.output_images(entry, "17")
    assert len(heat) == 2 and heat[0].shape == (SIZE, SIZE, 3)


def _error_of(comfy: ComfyClient, prompt: dict) -> str:
    with pytest.raises(PromptFailed) as info:
        comfy.run(prompt)
    return ComfyClient.error_text(info.value.entry)


def test_bad_inputs_give_clear_errors_and_the_server_keeps_running(comfy, tiny_checkpoint, photos):
    (n1, _), (n2, _) = photos.items()
    # a latent of the wrong size for the measurement
    g = base_graph(tiny_checkpoint, [n1], "eq_bad_size")
    g["8"] = posterior_sampler_node(comfy)
    g["7"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}}
    text = _error_of(comfy, g)
    assert "latent" in text and "Target Latent" in text, text
    # two measurements for a batch of three latents
    g = base_graph(tiny_checkpoint, [n1, n2], "eq_bad_batch")
    g["8"] = posterior_sampler_node(comfy)
    g["7"] = {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 3}}
    text = _error_of(comfy, g)
    assert "measurement" in text and "batch" in text, text
    # non-positive step sizes
    g = base_graph(tiny_checkpoint, [n1], "eq_bad_step")
    g["8"] = posterior_sampler_node(comfy, dps_step_size=0.0)
    assert "dps_step_size" in _error_of(comfy, g)
    gg = guided_graph(tiny_checkpoint, n1, "eq_bad_guider", posterior_guider_node(0.0))
    assert "step_size" in json.dumps(comfy.validation_error(gg))
    # equicon with an f that does not map back into its input space
    g = base_graph(tiny_checkpoint, [n1], "eq_bad_form")
    g["15"] = regularizer_node(comfy, source="vae_decoder", form="equicon")
    g["8"] = posterior_sampler_node(comfy, equireg=["15", 0])
    text = _error_of(comfy, g)
    assert "form" in text and "equicon" in text, text
    # the server still works
    g = with_euler(base_graph(tiny_checkpoint, [n1], "eq_still_alive"))
    g["9"]["inputs"]["steps"] = 1
    assert np.isfinite(run_images(comfy, g)[0]).all()
