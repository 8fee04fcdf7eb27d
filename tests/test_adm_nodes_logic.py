"""Comfy-free logic of the pixel-space (ADM) nodes: weight dtype choice, head-count checks against a
file's saved config, checkpoint loading for the loader node, the ComfyUI ``diffusion_model`` adapter and
the noise schedule. ComfyUI itself is exercised in ``tests/integration/test_adm_nodes.py``."""

from __future__ import annotations

import math

import pytest
import torch
from pack_import import pack_module

logic = pack_module("nodes.adm_logic")
models = pack_module("samplers.models")

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small convolutions are far faster on one thread than on two contended ones (shared CI cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SMALL = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,), out_channels=6)


def random_adm(seed: int = 0, **overrides) -> torch.nn.Module:
    """A small ADM whose every weight is random (the fresh network zero-initialises its output convs)."""
    net = models.ADMUNet(models.ADMConfig(**{**SMALL, **overrides}))
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


# ---------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("choice", "device", "launch", "bf16_ok", "expected", "noted"),
    [
        ("auto", "cpu", None, True, torch.float32, False),
        ("auto", "cpu", torch.float16, True, torch.float32, False),  # launch flag, but no GPU
        ("auto", "cuda", None, True, torch.float32, False),
        ("auto", "cuda", torch.float16, True, torch.float16, False),
        ("auto", "cuda", torch.bfloat16, True, torch.bfloat16, False),
        ("fp32", "cuda", torch.float16, True, torch.float32, False),
        ("fp16", "cuda", None, True, torch.float16, False),
        ("bf16", "cuda", None, True, torch.bfloat16, False),
        ("bf16", "cuda", None, False, torch.float32, True),
        ("fp16", "cpu", None, True, torch.float32, True),
        ("bf16", "cpu", None, True, torch.float32, True),
    ],
)
def test_weight_dtype_is_half_only_on_a_gpu_when_asked(choice, device, launch, bf16_ok, expected, noted):
    dtype, note = logic.resolve_weight_dtype(choice, torch.device(device), launch, bf16_ok=bf16_ok)
    assert dtype == expected
    assert (note is not None) == noted
    if noted:
        assert choice in note and "float32" in note


def test_weight_dtype_rejects_unknown_choices():
    with pytest.raises(ValueError, match="weight_dtype.*auto, fp32, fp16, bf16"):
        logic.resolve_weight_dtype("fp8", "cpu")


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "64"])
def test_num_head_channels_validation(value):
    with pytest.raises((TypeError, ValueError), match="num_head_channels"):
        logic.check_num_head_channels(value)


@pytest.mark.parametrize("value", [-1, 1, 64])
def test_num_head_channels_valid(value):
    assert logic.check_num_head_channels(value) == value


def test_schedule_is_the_adm_linear_schedule():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    abar = torch.cumprod(1.0 - betas, 0)
    sigmas = logic.schedule_sigmas()
    assert sigmas.dtype == torch.float64 and sigmas.shape == (1000,)
    torch.testing.assert_close(sigmas, ((1 - abar) / abar).sqrt(), rtol=1e-12, atol=0)
    # The SD-style "linear" schedule (sqrt-spaced betas) is a different table.
    sd_betas = torch.linspace(1e-4**0.5, 0.02**0.5, 1000, dtype=torch.float64) ** 2
    sd_abar = torch.cumprod(1.0 - sd_betas, 0)
    assert not torch.allclose(sigmas, ((1 - sd_abar) / sd_abar).sqrt(), rtol=1e-3)


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def net():
    return random_adm(0)


@pytest.fixture(scope="module")
def files(net, tmp_path_factory):
    d = tmp_path_factory.mktemp("adm")
    st = d / "tiny.safetensors"
    models.save_adm_safetensors(net, st)
    pt = d / "tiny.pt"
    torch.save(net.state_dict(), pt)
    return {"safetensors": st, "pt": pt}


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_load_pixel_adm_reproduces_the_network(net, files, kind):
    loaded = logic.load_pixel_adm(files[kind], num_head_channels=64)
    assert isinstance(loaded, models.ADMUNet) and not loaded.training and not loaded.use_checkpoint
    assert all(not p.requires_grad for p in loaded.parameters())
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([10.0, 900.0])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t), net(x, t), rtol=0, atol=0)


def test_saved_config_only_for_our_safetensors(files, tmp_path):
    assert logic.saved_config(files["safetensors"])["num_head_channels"] == 64
    assert logic.saved_config(files["pt"]) is None
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(1)}, str(foreign))
    assert logic.saved_config(foreign) is None


def test_head_channels_must_match_the_saved_config(files, tmp_path):
    with pytest.raises(ValueError, match="num_head_channels=64.*asks for 32.*set num_head_channels to 64"):
        logic.load_pixel_adm(files["safetensors"], num_head_channels=32)
    # A .pt file carries no config: the widget decides (32 divides the attention's 64 channels).
    loaded = logic.load_pixel_adm(files["pt"], num_head_channels=32)
    assert loaded.config.num_head_channels == 32


def test_gradient_checkpointing_and_dtype_options(files):
    loaded = logic.load_pixel_adm(files["safetensors"], dtype=torch.bfloat16, gradient_checkpointing=True)
    assert loaded.dtype == torch.bfloat16 and loaded.use_checkpoint
    with pytest.raises(TypeError, match="gradient_checkpointing"):
        logic.load_pixel_adm(files["safetensors"], gradient_checkpointing=1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_classes": 10}, "class-conditional"),
        ({"in_channels": 4, "out_channels": 8}, "RGB model"),
        ({"out_channels": 4}, "output channels"),
    ],
)
def test_only_unconditional_rgb_epsilon_models(tmp_path, overrides, message):
    path = tmp_path / "other.safetensors"
    models.save_adm_safetensors(random_adm(1, **overrides), path)
    with pytest.raises(ValueError, match=message):
        logic.load_pixel_adm(path)


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a pickled module object, not a state dict
    with pytest.raises(models.UnsafeCheckpointError, match="weights_only"):
        logic.load_pixel_adm(path)


# ---------------------------------------------------------------------------------------------------
# The diffusion_model adapter
# ---------------------------------------------------------------------------------------------------


def test_adapter_returns_the_epsilon_half(net):
    wrapped = logic.ComfyADMDiffusionModel(net)
    assert wrapped.dtype == torch.float32
    x = torch.randn(2, 3, 12, 20, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([3.0, 500.0])
    with torch.no_grad():
        out = wrapped(x, t, context=torch.zeros(2, 1, 1), control=None, transformer_options={})
        full = net(x, t)
    assert out.shape == (2, 3, 12, 20)
    torch.testing.assert_close(out, full[:, :3], rtol=0, atol=0)


def test_adapter_with_comfy_eps_formula_is_the_adm_denoiser(net):
    """ComfyUI's EPS model: denoised = x - sigma * eps(x / sqrt(1 + sigma^2), t); at the schedule's own
    sigmas this is exactly ADMDenoiser (the reference's x0 prediction)."""
    wrapped = logic.ComfyADMDiffusionModel(net)
    sig_table = logic.schedule_sigmas().float()
    idx = torch.tensor([0, 250, 999])
    sigma = sig_table[idx]
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * (1 + sigma.view(-1, 1, 1, 1))
    s = sigma.view(-1, 1, 1, 1)
    with torch.no_grad():
        comfy_style = x - s * wrapped(x / torch.sqrt(1 + s * s), idx.float())
        reference = models.ADMDenoiser(net)(x, sigma)
    torch.testing.assert_close(comfy_style, reference, rtol=1e-5, atol=1e-5)


def test_adapter_is_differentiable_in_x(net):
    wrapped = logic.ComfyADMDiffusionModel(net)
    x = torch.randn(1, 3, 8, 8, requires_grad=True)
    wrapped(x, torch.tensor([100.0])).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_adapter_rejects_what_it_cannot_use(net):
    wrapped = logic.ComfyADMDiffusionModel(net)
    x = torch.zeros(1, 3, 8, 8)
    t = torch.tensor([1.0])
    with pytest.raises(TypeError, match=r"unsupported conditioning input\(s\) \['y'\].*valid"):
        wrapped(x, t, y=torch.tensor([1]))
    with pytest.raises(ValueError, match="ControlNets"):
        wrapped(x, t, control={"output": []})
    with pytest.raises(RuntimeError, match="only partly on meta.*fit on the GPU"):
        wrapped(torch.zeros(1, 3, 8, 8, device="meta"), t)
    with pytest.raises(TypeError, match="ADMUNet"):
        logic.ComfyADMDiffusionModel(torch.nn.Linear(2, 2))


def test_size_note_names_the_essentials(net):
    note = logic.model_size_note(net)
    assert "M params" in note and "float32" in note and "learned variance" in note and "64 ch/head" in note
