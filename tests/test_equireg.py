"""Tests of the EquiReg regularizer core (samplers.equireg)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from samplers.equireg import (
    FEATURE_ACTIONS,
    FORMS,
    GROUPS,
    REDUCTIONS,
    SCHEDULES,
    EquiReg,
    Schedule,
    SmallCNN,
    decoder_mpe,
    encoder_after_decoder_mpe,
    encoder_mpe,
    equi_phase,
    get_group,
    load_mpe_cnn,
    save_mpe_cnn,
)
from samplers.equireg.penalty import apply_feature_action, equivariance_difference, reduce_per_sample

ALL_GROUPS = sorted(GROUPS)


def _x(b: int = 2, c: int = 3, h: int = 37, w: int = 31, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, c, h, w, generator=g, dtype=dtype) * 2 - 1)


class Counter:
    """Wraps f and counts its calls."""

    def __init__(self, f):
        self.f = f
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return self.f(x)


def _conv(cin: int = 3, cout: int = 3, k: int = 3, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    conv.requires_grad_(False)
    return conv


def _ramp(x: torch.Tensor) -> torch.Tensor:
    """A position-dependent (hence non-equivariant) pointwise map, shape preserving."""
    h, w = x.shape[-2:]
    ramp = torch.linspace(0.1, 2.0, h)[:, None] * torch.linspace(0.5, 1.5, w)[None, :] ** 2
    return x * ramp.to(x)


# ------------------------------------------------------------------------------------------ groups


@pytest.mark.parametrize("name", ALL_GROUPS)
@pytest.mark.parametrize("hw", [(37, 31), (16, 16), (5, 12)])
def test_group_inverse_is_identity(name, hw):
    group = get_group(name)
    x = _x(2, 3, *hw)
    for g in group.elements:
        y = group.apply(x, g)
        assert torch.equal(group.apply_inverse(y, g), x)
        assert torch.equal(group.apply(group.apply(x, group.inverse(g)), g), x)
        assert group.inverse(group.inverse(g)) == g
    assert 0 not in group.sample_from  # identity is never drawn


def test_group_ops_match_their_names():
    x = _x(1, 2, 7, 5)
    assert torch.equal(GROUPS["hflip"].apply(x, 1), x.flip(-1))
    assert torch.equal(GROUPS["vflip"].apply(x, 1), x.flip(-2))
    assert torch.equal(GROUPS["rot180"].apply(x, 1), x.flip(-1).flip(-2))
    r = GROUPS["rot90"]
    assert r.apply(x, 1).shape == (1, 2, 5, 7)
    assert torch.equal(r.apply(r.apply(x, 1), 1), r.apply(x, 2))
    assert torch.equal(r.apply(r.apply(x, 2), 1), r.apply(x, 3))
    assert torch.equal(r.apply(x, 2), x.flip(-1).flip(-2))
    assert r.sample_from == (1, 3)  # only +/- 90 degrees at run time, like the original


def test_group_rejects_bad_names_and_elements():
    with pytest.raises(ValueError) as e:
        get_group("shear")
    for name in ("hflip", "vflip", "rot90", "rot180"):
        assert name in str(e.value)
    with pytest.raises(ValueError, match="element must be one of"):
        GROUPS["hflip"].apply(_x(), 2)
    with pytest.raises(TypeError):
        GROUPS["rot90"].apply(_x(), 1.0)
    with pytest.raises(ValueError, match="last two"):
        GROUPS["hflip"].apply(torch.zeros(3), 1)


# -------------------------------------------------------------------------------- feature action


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_vector_features_are_invariant(name):
    group = get_group(name)
    v = torch.arange(10.0).reshape(2, 5)  # B=2 != C=5: a rot90 on this would transpose it
    for g in group.elements:
        assert torch.equal(apply_feature_action(group, v, g, "auto"), v)
        assert torch.equal(apply_feature_action(group, v, g, "invariant"), v)
    with pytest.raises(ValueError, match="spatial"):
        apply_feature_action(group, v, 1, "spatial")


def test_hflip_does_not_reverse_vector_channels_and_rot90_works_on_vectors():
    # Globally pooled per-channel means, distinct per channel; reversing channels would be non-zero.
    weights = torch.tensor([1.0, 2.0, 3.0])

    def pooled(x):
        return x.mean(dim=(-2, -1)) * weights

    x = _x(2, 3, 9, 7) + torch.tensor([0.0, 1.0, 3.0])[:, None, None]
    for name in ("hflip", "rot90"):
        reg = EquiReg(pooled, group=name, alpha=1.0)
        for g in reg.group.sample_from:
            err = reg.equivariance_error(x, element=g)
            assert err.shape == (2,)
            assert torch.allclose(err, torch.zeros(2), atol=1e-5)
    # What the released library did: flipping the (B, C) vector. That is far from zero here.
    fx = pooled(x)
    assert (fx.flip(-1) - fx).norm() > 1.0


def test_auto_feature_action_picks_by_ndim():
    conv = _conv(3, 4, 1)
    x = _x(2, 3, 8, 6)
    d_auto = equivariance_difference(conv, x, GROUPS["rot90"], 1, "equi", "auto")
    d_spatial = equivariance_difference(conv, x, GROUPS["rot90"], 1, "equi", "spatial")
    assert torch.equal(d_auto, d_spatial)
    # "invariant" on spatial maps compares f(x) with f(T_g x) without moving f(x): shapes differ here.
    with pytest.raises(ValueError, match="shape"):
        equivariance_difference(conv, x, GROUPS["rot90"], 1, "equi", "invariant")


# ------------------------------------------------------------------------ equivariant / not


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_zero_error_for_equivariant_f(name):
    x = _x(2, 3, 37, 31)
    conv1x1 = _conv(3, 5, 1)
    for f in (torch.tanh, conv1x1):
        reg = EquiReg(f, group=name, alpha=1.0)
        for g in reg.group.elements:
            err = reg.equivariance_error(x, element=g)
            assert err.shape == (2,)
            assert torch.allclose(err, torch.zeros(2), atol=1e-5), (name, g, err)

    # A globally pooled vector f is invariant, so the invariant action gives zero as well.
    lin = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    reg = EquiReg(lambda t: t.mean(dim=(-2, -1)) @ lin, group=name, alpha=1.0)
    for g in reg.group.elements:
        assert torch.allclose(reg.equivariance_error(x, element=g), torch.zeros(2), atol=1e-5)


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_nonzero_error_for_non_equivariant_f(name):
    x = _x(2, 3, 37, 31)
    for f in (_ramp, _conv(3, 4, 3)):
        reg = EquiReg(f, group=name, alpha=1.0)
        for g in reg.group.sample_from:
            err = reg.equivariance_error(x, element=g)
            assert (err > 1e-2).all(), (name, g, err)
        # The identity element is trivially equivariant.
        assert torch.allclose(reg.equivariance_error(x, element=0), torch.zeros(2))


def test_equi_matches_definition():
    x = _x(2, 3, 37, 31)
    conv = _conv(3, 4, 3)
    reg = EquiReg(conv, group="rot90", alpha=1.0)
    d = torch.rot90(conv(x), 1, dims=(-2, -1)) - conv(torch.rot90(x, 1, dims=(-2, -1)))
    expected = d.flatten(1).norm(dim=1)
    assert torch.allclose(reg.equivariance_error(x, element=1), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL_GROUPS)
def test_equicon_equals_round_trip_error_at_transformed_input(name):
    x = _x(2, 3, 37, 31)
    for f in (_conv(3, 3, 3), _ramp):
        reg = EquiReg(f, group=name, form="equicon", alpha=1.0)
        for g in reg.group.elements:
            tx = reg.group.apply(x, g)
            expected = (tx - f(tx)).flatten(1).norm(dim=1)
            assert torch.allclose(reg.equivariance_error(x, element=g), expected, rtol=1e-5, atol=1e-6)


def test_equicon_needs_f_into_x_space():
    reg = EquiReg(_conv(3, 5, 3), form="equicon", alpha=1.0)
    with pytest.raises(ValueError, match=r"f\(T_g x\) has shape \(2, 5, 37, 31\)"):
        reg.equivariance_error(_x(), element=1)


# ------------------------------------------------------------------------------------ reductions


def test_reductions_per_sample_and_relation_to_batch_norm():
    x = _x(3, 3, 37, 31)
    f = _conv(3, 4, 3)
    group = GROUPS["hflip"]
    d = equivariance_difference(f, x, group, 1, "equi", "auto")
    norm = reduce_per_sample(d, "norm")
    sq = reduce_per_sample(d, "sqnorm")
    mse = reduce_per_sample(d, "mse")
    per_sample = torch.stack([torch.sqrt((d[i] ** 2).sum()) for i in range(3)])
    assert torch.allclose(norm, per_sample, rtol=1e-5)
    assert torch.allclose(sq, norm**2, rtol=1e-5)
    assert torch.allclose(mse, sq / d[0].numel(), rtol=1e-6)
    # The released library's whole-batch norm is sqrt(sum_i ||d_i||^2).
    assert torch.allclose(torch.linalg.norm(d), torch.sqrt((norm**2).sum()), rtol=1e-5)
    for r in REDUCTIONS:
        reg = EquiReg(f, group="hflip", reduction=r, alpha=0.5)
        expected = 0.5 * reduce_per_sample(d, r)
        assert torch.allclose(reg(x, 0), expected, rtol=1e-5)


def test_batch_independence_values_and_gradients():
    model = SmallCNN(in_channels=3, base_channels=8, num_blocks=2)
    model.requires_grad_(False)
    x = _x(3, 3, 37, 31, seed=4)
    for form, f in (("equi", model), ("equicon", _conv(3, 3, 3))):
        reg = EquiReg(f, group="rot90", form=form, alpha=0.3)
        xb = x.clone().requires_grad_(True)
        batch = reg(xb, 0, element=3)
        (gb,) = torch.autograd.grad(batch.sum(), xb)
        for i in range(3):
            xi = x[i : i + 1].clone().requires_grad_(True)
            single = reg(xi, 0, element=3)
            (gi,) = torch.autograd.grad(single.sum(), xi)
            assert torch.allclose(batch[i : i + 1], single, rtol=1e-5, atol=1e-6)
            assert torch.allclose(gb[i : i + 1], gi, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------------ schedules


def test_schedule_step_sets():
    assert Schedule("constant", freq=0.1).active_steps(30) == [0, 10, 20]
    assert Schedule("constant", freq=0.3).active_steps(10) == [0, 3, 6, 9]  # period int(1/0.3) = 3
    assert Schedule("every").active_steps(5) == [0, 1, 2, 3, 4]
    cut = Schedule("cutoff", freq=1.0, cutoff_steps=10)
    steps = cut.active_steps(50)
    assert steps == list(range(40))  # off at 40..49 and not identically zero
    assert all(not cut.is_active(s, 50) for s in range(40, 50))
    assert Schedule("cutoff", freq=0.1, cutoff_steps=10).active_steps(50) == [0, 10, 20, 30]
    # The released library's fixed 100-step cutoff was identically zero here; ours is not.
    assert Schedule("cutoff", freq=1.0, cutoff_steps=0).active_steps(20) == list(range(20))


def test_schedule_validation():
    with pytest.raises(ValueError) as e:
        Schedule("linear")
    for name in SCHEDULES:
        assert name in str(e.value)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="freq"):
            Schedule("constant", freq=bad)
    with pytest.raises(ValueError, match="cutoff_steps"):
        Schedule("cutoff", cutoff_steps=-1)
    with pytest.raises(ValueError, match="no effect"):
        Schedule("every", freq=0.5)
    with pytest.raises(ValueError, match="no effect"):
        Schedule("constant", cutoff_steps=3)
    with pytest.raises(ValueError, match="total_steps"):
        Schedule("cutoff", cutoff_steps=2).is_active(0)
    with pytest.raises(ValueError, match="every step"):
        Schedule("cutoff", cutoff_steps=10).is_active(0, 10)
    with pytest.raises(ValueError, match="step"):
        Schedule("every").is_active(10, 10)
    with pytest.raises(ValueError, match="step"):
        Schedule("every").is_active(-1)


# ---------------------------------------------------------------------- EquiReg call semantics


def test_exact_zero_and_no_f_call_when_schedule_off():
    f = Counter(_ramp)
    reg = EquiReg(f, schedule="constant", freq=0.5, alpha=1.0)
    x = _x(2)
    for step in (1, 3, 5):
        out = reg(x, step, 10)
        assert out.shape == (2,) and out.dtype == x.dtype
        assert torch.equal(out, torch.zeros(2)) and not out.requires_grad
    assert f.calls == 0
    assert not reg.is_active(1, 10) and reg.is_active(2, 10)
    out = reg(x, 2, 10)
    assert f.calls == 2 and (out > 0).all()  # equi evaluates f(x) and f(T_g x)


def test_exact_zero_and_no_f_call_when_alpha_zero():
    f = Counter(_ramp)
    reg = EquiReg(f, alpha=0.0)
    x = _x(3, dtype=torch.float64)
    out = reg(x, 0, 10)
    assert torch.equal(out, torch.zeros(3, dtype=torch.float64)) and out.dtype == torch.float64
    assert f.calls == 0 and not reg.is_active(0, 10)


def test_alpha_scales_and_cutoff_in_call():
    x = _x(2)
    base = EquiReg(_ramp, alpha=1.0).equivariance_error(x, element=1)
    reg = EquiReg(_ramp, alpha=0.25, schedule="cutoff", cutoff_steps=3)
    assert torch.allclose(reg(x, 6, 10, element=1), 0.25 * base)
    assert torch.equal(reg(x, 7, 10, element=1), torch.zeros(2))


def test_element_draws_are_seeded_and_from_sample_from():
    x = _x(1, 3, 9, 6)
    ref = EquiReg(_ramp, group="rot90", alpha=1.0)
    per_element = {g: ref.equivariance_error(x, element=g) for g in range(4)}
    assert len({round(v.item(), 5) for v in per_element.values()}) == 4  # the elements are distinguishable

    def draws(seed):
        reg = EquiReg(_ramp, group="rot90", alpha=1.0, seed=seed)
        out = []
        for _ in range(24):
            v = reg(x, 0)
            out.append(next(g for g, e in per_element.items() if torch.allclose(v, e)))
        return out

    a = draws(7)
    assert a == draws(7)
    assert set(a) == {1, 3}


def test_skipped_steps_do_not_consume_draws():
    x = _x(1, 3, 9, 6)
    r1 = EquiReg(_ramp, group="rot90", alpha=1.0, schedule="constant", freq=0.5, seed=3)
    r2 = EquiReg(_ramp, group="rot90", alpha=1.0, schedule="constant", freq=0.5, seed=3)
    seq1 = [r1(x, s, 20) for s in range(0, 20, 2)]
    seq2 = []
    for s in range(20):
        v = r2(x, s, 20)
        if s % 2 == 0:
            seq2.append(v)
    assert all(torch.equal(a, b) for a, b in zip(seq1, seq2, strict=True))


def test_unknown_options_rejected_with_valid_list():
    with pytest.raises(TypeError) as e:
        EquiReg(_ramp, equi_alpha=0.1)
    assert "equi_alpha" in str(e.value)
    for opt in EquiReg.OPTIONS:
        assert opt in str(e.value)
    with pytest.raises(ValueError) as e:
        EquiReg.from_config({"alpha": 0.1, "total_steps": 50}, _ramp)
    assert "total_steps" in str(e.value) and "cutoff_steps" in str(e.value)
    for kw, valid in (("form", FORMS), ("reduction", REDUCTIONS), ("feature_action", FEATURE_ACTIONS),
                      ("schedule", SCHEDULES), ("group", tuple(GROUPS))):
        with pytest.raises(ValueError) as e:
            EquiReg(_ramp, **{kw: "bogus"})
        for v in valid:
            assert v in str(e.value), (kw, v)
    with pytest.raises(ValueError, match="alpha"):
        EquiReg(_ramp, alpha=-1.0)
    with pytest.raises(TypeError, match="callable"):
        EquiReg("not a function")


def test_from_config_round_trip():
    cfg = {"group": "vflip", "form": "equicon", "alpha": 0.2, "freq": 0.5, "schedule": "cutoff",
           "cutoff_steps": 4, "reduction": "mse", "feature_action": "spatial", "seed": 5}
    reg = EquiReg.from_config(cfg, _ramp)
    assert reg.to_config() == cfg
    assert EquiReg.from_config(reg.to_config(), _ramp).to_config() == cfg


def test_error_map():
    x = _x(2, 3, 37, 31)
    conv = _conv(3, 3, 3)
    reg = EquiReg(conv, group="rot90", form="equicon", alpha=1.0)
    tx = torch.rot90(x, 3, dims=(-2, -1))
    expected = (x - torch.rot90(conv(tx), 1, dims=(-2, -1))).abs().mean(dim=1, keepdim=True)
    assert torch.allclose(reg.error_map(x, element=3), expected, atol=1e-6)
    # equi: the map is pulled back to x's frame, so it has x's orientation (37 x 31, not 31 x 37).
    reg = EquiReg(_ramp, group="rot90", alpha=1.0)
    d = torch.rot90(_ramp(x), 1, dims=(-2, -1)) - _ramp(torch.rot90(x, 1, dims=(-2, -1)))
    expected = torch.rot90(d, 3, dims=(-2, -1)).abs().mean(dim=1, keepdim=True)
    m = reg.error_map(x, element=1)
    assert m.shape == (2, 1, 37, 31)
    assert torch.allclose(m, expected, atol=1e-6)
    with pytest.raises(ValueError, match="spatial"):
        EquiReg(lambda t: t.mean(dim=(-2, -1))).error_map(x, element=1)


def test_half_input_gives_float32_penalty():
    x = _x(2, 3, 8, 8).half()
    reg = EquiReg(lambda t: _ramp(t.float()), alpha=1.0)
    out = reg(x, 0)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert reg(x, 0, 1).dtype == torch.float32
    assert EquiReg(_ramp, alpha=0.0)(x, 0).dtype == torch.float32


# ----------------------------------------------------------------------------------- adapters


def test_mpe_adapters():
    def decode(z):
        return F.interpolate(z, scale_factor=2, mode="nearest")

    def encode(img):
        return F.avg_pool2d(img, 2)

    z = _x(2, 4, 9, 7)
    f = encoder_after_decoder_mpe(encode, decode)
    assert torch.equal(f(z), encode(decode(z)))
    for name in ALL_GROUPS:  # E(D(z)) = z exactly here, so the round-trip error is zero
        reg = EquiReg(f, group=name, form="equicon", alpha=1.0)
        assert torch.allclose(reg(z, 0), torch.zeros(2), atol=1e-6)
    assert torch.equal(decoder_mpe(decode)(z), decode(z))
    assert torch.equal(encoder_mpe(encode)(z), encode(z))
    # The decoder alone is ill-typed for equicon (a latent minus an image).
    with pytest.raises(ValueError, match=r"\(2, 4, 18, 14\)"):
        EquiReg(decoder_mpe(decode), form="equicon", alpha=1.0)(z, 0)
    with pytest.raises(TypeError):
        encoder_after_decoder_mpe(encode, None)


# ----------------------------------------------------------------------------------- SmallCNN


def test_small_cnn_shapes_and_default_channels():
    model = SmallCNN(in_channels=3, base_channels=4, num_blocks=4)
    y = model(_x(2, 3, 37, 31))
    assert y.shape == (2, 16, math.ceil(37 / 16), math.ceil(31 / 16))
    assert [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)] == [4, 8, 16, 16]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    with pytest.raises(ValueError, match="no classification head"):
        model.classify(_x(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(_x(1, 4, 8, 8))
    with pytest.raises(ValueError, match="norm"):
        SmallCNN(norm="batch")


def test_small_cnn_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN(in_channels=4, base_channels=8, num_blocks=2, num_classes=3)
    path = tmp_path / "mpe.safetensors"
    save_mpe_cnn(model, path)
    loaded = load_mpe_cnn(path)
    assert loaded.config == model.config
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = _x(2, 4, 13, 11)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.classify(x), model.classify(x))
    loaded64 = load_mpe_cnn(path, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in loaded64.parameters())


def test_load_mpe_cnn_rejects_bad_files(tmp_path):
    model = SmallCNN(in_channels=3, base_channels=8, num_blocks=2)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    other = SmallCNN(in_channels=3, base_channels=16, num_blocks=2)
    meta = {"equireg_format": "equireg.small_cnn", "config": '{"in_channels": 3, "base_channels": 16, '
            '"num_blocks": 2, "num_classes": 0, "norm": "group"}'}
    assert other.config["base_channels"] == 16

    p = tmp_path / "mismatch.safetensors"
    save_file(state, str(p), metadata=meta)
    with pytest.raises(ValueError, match="shape mismatches.*features.0.weight"):
        load_mpe_cnn(p)

    p = tmp_path / "missing.safetensors"
    ok_meta = dict(meta, config=meta["config"].replace("16", "8"))
    save_file({k: v for k, v in state.items() if k != "features.1.weight"}, str(p), metadata=ok_meta)
    with pytest.raises(ValueError, match=r"missing keys \['features.1.weight'\]"):
        load_mpe_cnn(p)

    p = tmp_path / "extra.safetensors"
    save_file(dict(state, bogus=torch.zeros(1)), str(p), metadata=ok_meta)
    with pytest.raises(ValueError, match=r"unexpected keys \['bogus'\]"):
        load_mpe_cnn(p)

    p = tmp_path / "plain.safetensors"
    save_file(state, str(p))
    with pytest.raises(ValueError, match="not a SmallCNN MPE checkpoint"):
        load_mpe_cnn(p)

    p = tmp_path / "badcfg.safetensors"
    save_file(state, str(p), metadata=dict(ok_meta, config='{"in_channels": 3, "depth": 2}'))
    with pytest.raises(ValueError, match="unknown config key"):
        load_mpe_cnn(p)

    with pytest.raises(FileNotFoundError):
        load_mpe_cnn(tmp_path / "nope.safetensors")


# --------------------------------------------------------------------------------- equi_phase


class _PositionScale(nn.Module):
    """A trainable per-pixel scale: cheap, differentiable and not flip-equivariant."""

    def __init__(self, h: int, w: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.1, 2.0, h * w).reshape(h, w) ** 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + 0.3 * torch.tanh(x.roll(1, dims=-1))


def test_equi_phase_reduces_penalty_and_keeps_dtype():
    f = _PositionScale(16, 12)  # parameters require grad: the phase must not touch their .grad
    reg = EquiReg(f, group="hflip", alpha=0.01, reduction="sqnorm")
    x = _x(2, 3, 16, 12, seed=5)
    before = reg(x, 0, 10)
    with torch.no_grad():  # the phase must still work inside no_grad
        out = equi_phase(reg, x, step=0, total_steps=10, num_steps=30, lr=0.02)
    after = reg(out, 0, 10)
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    assert (after < 0.7 * before).all(), (before, after)
    assert f.scale.grad is None
    # Batch independence: hflip has a single non-identity element, so the phase is deterministic.
    singles = torch.cat([equi_phase(reg, x[i : i + 1], 0, 10, num_steps=30) for i in range(2)])
    assert torch.allclose(out, singles, atol=1e-5)

    xh = x.half()
    out_h = equi_phase(reg, xh, 0, 10, num_steps=5)
    assert out_h.dtype == torch.float16 and not torch.equal(out_h, xh)


def test_equi_phase_strength_is_set_by_steps_and_lr_not_alpha():
    # Adam normalises the gradient, so in the released method (penalty alone, Adam) alpha only
    # rescales what Adam divides out again: alpha 0.01 and 1 move x the same way. The docs say so.
    f = _PositionScale(16, 12)
    x = _x(2, 3, 16, 12, seed=7)
    small = equi_phase(EquiReg(f, group="hflip", alpha=0.01), x, 0, 10, num_steps=30, lr=0.02)
    large = equi_phase(EquiReg(f, group="hflip", alpha=1.0), x, 0, 10, num_steps=30, lr=0.02)
    move = (large - x).abs().max()
    assert move > 0.1  # the move itself is not small ...
    assert (small - large).abs().max() < 0.01 * move  # ... and 100x less alpha changes it by < 1%
    fewer = equi_phase(EquiReg(f, group="hflip", alpha=1.0), x, 0, 10, num_steps=3, lr=0.02)
    assert (fewer - x).abs().max() < 0.5 * (large - x).abs().max()


def test_equi_phase_inactive_step_leaves_x_unchanged():
    f = Counter(_ramp)
    reg = EquiReg(f, schedule="constant", freq=0.5, alpha=1.0)
    x = _x(2)
    out = equi_phase(reg, x, step=1, total_steps=10)
    assert torch.equal(out, x) and f.calls == 0
    out = equi_phase(EquiReg(f, alpha=0.0), x, step=0, total_steps=10)
    assert torch.equal(out, x) and f.calls == 0
    with pytest.raises(ValueError, match="num_steps"):
        equi_phase(reg, x, 0, 10, num_steps=-1)
    with pytest.raises(ValueError, match="differentiabl"):
        equi_phase(EquiReg(lambda t: _ramp(t).detach(), alpha=1.0), x, 0, 10, num_steps=1)
