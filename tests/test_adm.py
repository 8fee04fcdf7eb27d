"""Tests of our ADM (guided-diffusion UNet) implementation, its config inference, loaders and denoiser."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from samplers.models import (
    ADMConfig,
    ADMDenoiser,
    ADMUNet,
    UnsafeCheckpointError,
    adm_sigmas,
    infer_adm_config,
    load_adm_checkpoint,
    save_adm_safetensors,
    timestep_embedding,
)
from samplers.models.adm import GroupNorm32, ResBlock

FIXTURES = Path(__file__).parent / "fixtures" / "adm"
TINY_WEIGHTS = FIXTURES / "adm_tiny32_weights.safetensors"
TINY_IO = FIXTURES / "adm_tiny32_io.safetensors"
TINY_CONFIG = json.loads((FIXTURES / "adm_tiny32_config.json").read_text())
TINY_HEAD_CHANNELS = TINY_CONFIG["derived"]["num_head_channels"]

# Parameter counts stated in the fixtures README (DPS FFHQ config and DPS ImageNet config).
README_NUM_PARAMS = {"ffhq256": 93_563_910, "imagenet256": 552_814_086}


def _manifest(name: str) -> dict:
    return json.loads((FIXTURES / f"adm_{name}_state_dict_manifest.json").read_text())


@pytest.fixture(scope="module")
def tiny() -> ADMUNet:
    return load_adm_checkpoint(TINY_WEIGHTS, num_head_channels=TINY_HEAD_CHANNELS)


@pytest.fixture(scope="module")
def tiny_io() -> dict[str, torch.Tensor]:
    return load_file(TINY_IO)


# --------------------------------------------------------------------------------------------------------
# (1) The real checkpoints' key names and shapes


@pytest.mark.parametrize("name", ["ffhq256", "imagenet256"])
def test_manifest_keys_shapes_and_param_count(name: str) -> None:
    manifest = _manifest(name)
    keys = manifest["keys"]
    config = infer_adm_config(keys, image_size=manifest["_source"]["create_model_args"]["image_size"])

    derived = manifest["_source"]["derived"]
    args = manifest["_source"]["create_model_args"]
    assert config.model_channels == derived["model_channels"]
    assert list(config.channel_mult) == derived["channel_mult"]
    assert list(config.attention_ds) == sorted(derived["attention_ds"])
    assert (config.in_channels, config.out_channels) == (derived["in_channels"], derived["out_channels"])
    assert config.num_res_blocks == args["num_res_blocks"]
    assert config.use_scale_shift_norm == args["use_scale_shift_norm"]
    assert config.resblock_updown == args["resblock_updown"]
    assert config.learn_sigma == args["learn_sigma"]
    assert config.num_classes is None
    resolutions = sorted(int(r) for r in args["attention_resolutions"].split(","))
    assert sorted(config.attention_resolutions) == resolutions

    with torch.device("meta"):
        model = ADMUNet(config)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(keys)  # same names, same order, nothing missing or extra
    assert ours == keys
    num_params = sum(p.numel() for p in model.parameters())
    assert num_params == sum(math.prod(s) for s in keys.values()) == manifest["num_params"]
    assert num_params == README_NUM_PARAMS[name]


# Shape-derivable configurations that the two manifests do not exercise.
ROUND_TRIP_CONFIGS = [
    dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attention_ds=(2, 4),
         use_scale_shift_norm=False, resblock_updown=False, conv_resample=True),
    dict(model_channels=64, channel_mult=(1, 2, 3), num_res_blocks=1, attention_ds=(1, 4),
         resblock_updown=False, conv_resample=False),
    dict(model_channels=64, channel_mult=(1, 2), num_res_blocks=2, attention_ds=(2,), num_classes=10),
    dict(model_channels=64, channel_mult=(1,), num_res_blocks=1, attention_ds=(), resblock_updown=False),
    dict(model_channels=64, channel_mult=(0.5, 1, 2), num_res_blocks=1, attention_ds=(2,),
         num_head_channels=32),
    dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=0, attention_ds=(4,), in_channels=1,
         out_channels=1),
]


@pytest.mark.parametrize("kwargs", ROUND_TRIP_CONFIGS)
def test_config_inference_round_trip(kwargs: dict) -> None:
    config = ADMConfig(**kwargs)
    with torch.device("meta"):
        model = ADMUNet(config)
    options = {"num_head_channels": config.num_head_channels}
    assert infer_adm_config(model.state_dict(), **options) == config
    # Shapes given as lists (JSON manifests) work the same way.
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert infer_adm_config(shapes, **options) == config


def test_inference_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="time_embed.0.weight"):
        infer_adm_config({"foo.weight": [3, 3]})
    with pytest.raises(TypeError, match="valid options"):
        infer_adm_config(_manifest("ffhq256")["keys"], num_layers=3)
    with pytest.raises(TypeError, match="tensor or a shape"):
        infer_adm_config({"time_embed.0.weight": "512x128"})
    with pytest.raises(ValueError, match="num_head_channels"):
        infer_adm_config(_manifest("ffhq256")["keys"], num_head_channels=48)


def test_from_state_dict_reports_mismatches() -> None:
    state = load_file(TINY_WEIGHTS)
    state["out.2.bias"] = torch.zeros(5)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"out\.2\.bias: shape \[5\], expected \[6\].*|unexpected extra"):
        ADMUNet.from_state_dict(state, num_head_channels=TINY_HEAD_CHANNELS)


# --------------------------------------------------------------------------------------------------------
# (2) Numerical equality with the reference network's output


def test_tiny_model_matches_reference_output(tiny: ADMUNet, tiny_io: dict[str, torch.Tensor]) -> None:
    config = tiny.config
    derived = TINY_CONFIG["derived"]
    assert config.model_channels == derived["model_channels"]
    assert list(config.channel_mult) == derived["channel_mult"]
    assert list(config.attention_ds) == derived["attention_ds"]
    assert sum(p.numel() for p in tiny.parameters()) == TINY_CONFIG["num_params"]
    assert not tiny.training and tiny.dtype == torch.float32
    with torch.no_grad():
        out = tiny(tiny_io["x"], tiny_io["t"])
    assert out.shape == tiny_io["out"].shape == (1, 6, 32, 32)
    assert (out - tiny_io["out"]).abs().max().item() <= 1e-4


def test_head_count_matters(tiny_io: dict[str, torch.Tensor]) -> None:
    # Heads do not show in the shapes; the default (64 channels per head) is wrong for the tiny model.
    wrong = load_adm_checkpoint(TINY_WEIGHTS)
    assert wrong.config.num_head_channels == 64
    with torch.no_grad():
        out = wrong(tiny_io["x"], tiny_io["t"])
    assert (out - tiny_io["out"]).abs().max().item() > 1e-3


def test_timestep_embedding_definition() -> None:
    t = torch.tensor([0.0, 3.0, 499.5])
    emb = timestep_embedding(t, 7)
    half = 3
    freqs = [10000.0 ** (-i / half) for i in range(half)]
    for b, tb in enumerate(t.tolist()):
        expected = [math.cos(tb * f) for f in freqs] + [math.sin(tb * f) for f in freqs] + [0.0]
        assert torch.allclose(emb[b], torch.tensor(expected), atol=1e-4)


def test_odd_size_and_batch_independence(tiny: ADMUNet) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 21, 13, generator=g).clamp(-1, 1)
    t = torch.tensor([20.0, 800.0])
    with torch.no_grad():
        both = tiny(x, t)
        one = torch.cat([tiny(x[i : i + 1], t[i]) for i in range(2)])
    assert both.shape == (2, 6, 21, 13)
    assert torch.isfinite(both).all()
    assert torch.allclose(both, one, atol=1e-5)


def test_forward_rejects_bad_input(tiny: ADMUNet) -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny(torch.zeros(1, 4, 8, 8), 10)
    with pytest.raises(ValueError, match="timesteps"):
        tiny(torch.zeros(2, 3, 8, 8), torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="class-conditional"):
        tiny(torch.zeros(1, 3, 8, 8), 10, y=torch.tensor([1]))


def test_reduced_precision(tiny: ADMUNet, tiny_io: dict[str, torch.Tensor]) -> None:
    norm = GroupNorm32(64)
    torch.nn.init.normal_(norm.weight)
    x = torch.randn(2, 64, 4, 4) * 100 + 50
    half = norm.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    expected = torch.nn.functional.group_norm(x, 32, norm.weight.float(), norm.bias.float(), 1e-5)
    assert torch.allclose(half.float(), expected, atol=0.05, rtol=0.02)

    bf16 = ADMUNet(tiny.config).to(torch.bfloat16).eval()
    bf16.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        out = bf16(tiny_io["x"], tiny_io["t"])
    assert out.dtype == torch.float32  # output in the dtype of x
    ref = tiny_io["out"]
    assert (out - ref).norm() / ref.norm() < 0.05


# --------------------------------------------------------------------------------------------------------
# (3) Files


class _Custom:
    def __init__(self) -> None:
        self.value = 1


def test_pt_loading_weights_only(tmp_path: Path, tiny: ADMUNet, tiny_io: dict[str, torch.Tensor]) -> None:
    state = load_file(TINY_WEIGHTS)
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    nested = tmp_path / "nested.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "step": 5}, nested)
    with torch.no_grad():
        for path in (plain, nested):
            model = load_adm_checkpoint(path, num_head_channels=TINY_HEAD_CHANNELS)
            # Same weights; only the tensors' memory layout differs, which may change CPU kernels by ~1 ulp.
            expected = tiny(tiny_io["x"], tiny_io["t"])
            assert torch.allclose(model(tiny_io["x"], tiny_io["t"]), expected, atol=1e-5)

    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": _Custom(), "weights": state["out.2.bias"]}, unsafe)
    with pytest.raises(UnsafeCheckpointError, match="weights_only=True") as info:
        load_adm_checkpoint(unsafe)
    assert str(unsafe) in str(info.value)
    assert isinstance(info.value.__cause__, pickle.UnpicklingError)

    with pytest.raises(ValueError, match="unsupported checkpoint extension"):
        load_adm_checkpoint(TINY_CONFIG_PATH)
    with pytest.raises(TypeError, match="valid options"):
        load_adm_checkpoint(plain, heads=2)


TINY_CONFIG_PATH = FIXTURES / "adm_tiny32_config.json"


def test_save_and_reload_keeps_config(tmp_path: Path) -> None:
    config = ADMConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,),
                       num_head_channels=16, use_new_attention_order=True, image_size=16)
    torch.manual_seed(0)
    model = ADMUNet(config).eval()
    with torch.no_grad():  # zero-initialised layers would make the head settings irrelevant
        for p in model.parameters():
            p.normal_(0, 0.05)
    path = tmp_path / "random_adm.safetensors"
    save_adm_safetensors(model, path)
    loaded = load_adm_checkpoint(path)
    assert loaded.config == config
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x, 100), model(x, 100), atol=1e-6)
    # A file whose stored config contradicts its tensors is refused.
    bad = tmp_path / "bad.safetensors"
    other = json.dumps({**config.to_dict(), "num_res_blocks": 2})
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(bad),
              metadata={"format": "pt", "adm_config": other})
    with pytest.raises(ValueError, match="disagrees"):
        load_adm_checkpoint(bad)


# --------------------------------------------------------------------------------------------------------
# (4) Gradient checkpointing


def test_gradient_checkpointing_same_output_and_grad(tiny: ADMUNet, tiny_io: dict[str, torch.Tensor]) -> None:
    block = next(m for m in tiny.modules() if isinstance(m, ResBlock))
    calls = []
    handle = block.in_layers[2].register_forward_hook(lambda *_: calls.append(1))
    results = []
    try:
        for enabled in (False, True):
            tiny.use_checkpoint = enabled
            calls.clear()
            x = tiny_io["x"].clone().requires_grad_(True)
            out = tiny(x, tiny_io["t"])
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
            results.append((out.detach(), x.grad, len(calls)))
    finally:
        tiny.use_checkpoint = False
        handle.remove()
    (out0, grad0, calls0), (out1, grad1, calls1) = results
    assert (calls0, calls1) == (1, 2)  # checkpointing recomputes the block in the backward pass
    assert torch.allclose(out0, out1, atol=1e-6)
    assert torch.allclose(grad0, grad1, atol=1e-6, rtol=1e-5)
    assert grad0.abs().sum() > 0


# --------------------------------------------------------------------------------------------------------
# (5) The k-diffusion denoiser


def test_adm_sigmas_definition() -> None:
    betas = np.linspace(1e-4, 0.02, 1000)
    alphas_cumprod = np.cumprod(1 - betas)
    expected = np.sqrt((1 - alphas_cumprod) / alphas_cumprod)
    sigmas = adm_sigmas(dtype=torch.float64).numpy()
    assert sigmas.shape == (1000,)
    np.testing.assert_allclose(sigmas, expected, rtol=1e-12)


def test_sigma_to_t_round_trip(tiny: ADMUNet) -> None:
    den = ADMDenoiser(tiny)
    sigmas = adm_sigmas()
    t = den.sigma_to_t(sigmas)
    assert torch.allclose(t, torch.arange(1000, dtype=torch.float32), atol=2e-3)
    # Half-way in log-sigma is half-way in t; outside the table t is clamped.
    mid = torch.sqrt(sigmas[10] * sigmas[11])
    assert abs(den.sigma_to_t(mid).item() - 10.5) < 2e-3
    assert den.sigma_to_t(torch.tensor([1e-5, 1e4])).tolist() == [0.0, 999.0]
    assert torch.allclose(den.t_to_sigma(t), sigmas, rtol=1e-4)
    assert den.sigma_min == pytest.approx(float(sigmas[0]))
    assert den.sigma_max == pytest.approx(float(sigmas[-1]))
    # Casting the denoiser to half precision keeps the schedule exact.
    assert den.to(torch.bfloat16).log_sigmas.dtype == torch.float32


def test_denoiser_definition_and_gradient(tiny_io: dict[str, torch.Tensor]) -> None:
    unet = load_adm_checkpoint(TINY_WEIGHTS, num_head_channels=TINY_HEAD_CHANNELS, dtype=torch.float64)
    den = ADMDenoiser(unet)
    sigmas = adm_sigmas(dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 16, 16, generator=g, dtype=torch.float64) * 2
    steps = [100, 600]
    sigma = sigmas[steps]
    with torch.no_grad():
        out = den(x, sigma)
        s = sigma.view(2, 1, 1, 1)
        expected = x - s * unet(x / torch.sqrt(1 + s**2), torch.tensor(steps, dtype=torch.float64))[:, :3]
    assert out.shape == x.shape and out.dtype == torch.float64
    # sigma_to_t works in float32, so t is 100 / 600 only to ~1e-5 here.
    assert torch.allclose(out, expected, atol=1e-5)
    # Scalar sigma means the same sigma for the whole batch.
    with torch.no_grad():
        assert torch.allclose(den(x, float(sigma[0])), den(x, sigma[[0, 0]]), atol=1e-12)

    # Differentiable in x: the autograd directional derivative equals a central difference.
    xr = x.clone().requires_grad_(True)
    w = torch.randn(x.shape, generator=g, dtype=torch.float64)
    v = torch.randn(x.shape, generator=g, dtype=torch.float64)
    (den(xr, sigma) * w).sum().backward()
    h = 1e-4
    with torch.no_grad():
        fd = ((den(x + h * v, sigma) - den(x - h * v, sigma)) * w).sum() / (2 * h)
    assert torch.isfinite(xr.grad).all()
    assert torch.allclose((xr.grad * v).sum(), fd, rtol=1e-6)

    with pytest.raises(TypeError, match="valid"):
        den(x, sigma, cond=None)
    with pytest.raises(ValueError, match="sigma"):
        den(x, torch.ones(3))
