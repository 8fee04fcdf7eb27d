"""The Operator / Simulate Measurement / Measurement from Image / Target Latent / Metrics nodes' functions on
tensors, without ComfyUI (``nodes.convert``, ``nodes.logic``, ``nodes.types``), checked against the core
library's definitions."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch
from pack_import import pack_module

from samplers import operators as ops
from samplers.equireg import EquiReg

convert = pack_module("nodes.convert")
logic = pack_module("nodes.logic")
ntypes = pack_module("nodes.types")


def comfy_image(b: int, h: int, w: int, c: int = 3, seed: int = 0) -> torch.Tensor:
    """A smooth random ComfyUI IMAGE (B, H, W, C) in [0.1, 0.9] (pseudo-inverses stay inside [-1, 1])."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(b, c, max(h // 4, 1), max(w // 4, 1), generator=g)
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (0.1 + 0.8 * x).permute(0, 2, 3, 1).contiguous()


def to_core(image: torch.Tensor) -> torch.Tensor:
    """Independent re-statement of the IMAGE -> core convention: channels first, [0, 1] -> [-1, 1]."""
    return image.permute(0, 3, 1, 2) * 2 - 1


# ---------------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------------


def test_image_round_trip_and_layout():
    img = comfy_image(2, 9, 7)
    x = convert.image_to_samplers(img)
    assert x.shape == (2, 3, 9, 7) and x.dtype == torch.float32
    assert x[1, 2, 4, 5] == pytest.approx(float(img[1, 4, 5, 2]) * 2 - 1)
    torch.testing.assert_close(convert.samplers_to_image(x), img)


def test_image_alpha_dropped_and_gray_repeated():
    rgba = torch.rand(1, 5, 4, 4)
    assert convert.image_to_samplers(rgba).shape == (1, 3, 5, 4)
    gray = torch.rand(1, 1, 5, 4) * 2 - 1
    shown = convert.samplers_to_image(gray)
    assert shown.shape == (1, 5, 4, 3)
    torch.testing.assert_close(shown[..., 0], shown[..., 2])


def test_samplers_to_image_clamps():
    out = convert.samplers_to_image(torch.tensor([-3.0, 0.0, 3.0]).view(1, 1, 1, 3))
    assert out[0, 0, :, 0].tolist() == [0.0, 0.5, 1.0]


@pytest.mark.parametrize(
    "bad, error, words",
    [
        (torch.full((1, 4, 4, 3), float("nan")), ValueError, ["image", "NaN"]),
        (torch.tensor([[[[0.0, float("inf"), 0.0]]]]), ValueError, ["image", "infinite"]),
        (torch.rand(4, 4, 3), ValueError, ["image", "(B, H, W, C)"]),
        (torch.rand(1, 4, 4, 2), ValueError, ["image", "channels"]),
        (torch.zeros(1, 4, 4, 3, dtype=torch.uint8), TypeError, ["image", "floating"]),
        ([[0.0]], TypeError, ["image", "IMAGE"]),
    ],
)
def test_bad_images_are_rejected_by_name(bad, error, words):
    with pytest.raises(error) as info:
        convert.image_to_samplers(bad, "image")
    for word in words:
        assert word in str(info.value)


def test_comfy_mask_to_observed():
    mask = torch.zeros(1, 4, 6)
    mask[0, 1:3, 2:5] = 1.0  # painted = missing
    mask[0, 0, 0] = 0.49  # soft edge below the threshold counts as observed
    observed = convert.comfy_mask_to_observed(mask, image_size=(4, 6), batch_size=3)
    assert observed.shape == (1, 1, 4, 6)
    torch.testing.assert_close(observed[0, 0], (mask[0] < 0.5).float())
    torch.testing.assert_close(convert.observed_to_comfy_mask(observed), (mask >= 0.5).float())
    assert convert.comfy_mask_to_observed(mask[0]).shape == (1, 1, 4, 6)  # (H, W) accepted


def test_comfy_mask_size_and_batch_errors():
    with pytest.raises(ValueError, match=r"mask: the MASK has size \(4, 6\).*image has size \(4, 5\)"):
        convert.comfy_mask_to_observed(torch.zeros(1, 4, 6), image_size=(4, 5))
    with pytest.raises(ValueError, match="mask: the MASK has batch size 2 but there are 3 images"):
        convert.comfy_mask_to_observed(torch.zeros(2, 4, 6), batch_size=3)
    with pytest.raises(ValueError, match="mask"):
        convert.comfy_mask_to_observed(torch.full((1, 2, 2), float("nan")))


def test_latent_size():
    assert convert.latent_size((64, 40), 8) == (8, 5)
    with pytest.raises(ValueError, match="60x40 .* not a multiple of the VAE's downscale ratio 8"):
        convert.latent_size((60, 40), 8)


def test_log_magnitude_view():
    y = torch.rand(2, 3, 5, 5) * torch.tensor([1.0, 100.0]).view(2, 1, 1, 1)
    v = convert.log_magnitude_view(y)
    for i in range(2):
        expected = torch.log1p(y[i]) / torch.log1p(y[i]).max() * 2 - 1
        torch.testing.assert_close(v[i], expected)
    assert v.amax(dim=(1, 2, 3)).tolist() == pytest.approx([1.0, 1.0])


def test_batch_broadcast():
    a, b = convert.batch_broadcast(torch.zeros(1, 2), torch.ones(3, 2), "a", "b")
    assert a.shape == b.shape == (3, 2)
    with pytest.raises(ValueError, match="a has batch size 2 but b has batch size 3"):
        convert.batch_broadcast(torch.zeros(2, 2), torch.ones(3, 2), "a", "b")


# ---------------------------------------------------------------------------------------------------
# Operator node
# ---------------------------------------------------------------------------------------------------


def test_operator_spec_uses_only_the_chosen_operators_parameters():
    spec = logic.operator_spec("super_resolution", sr_factor="8", kernel_size=4, blur_sigma=-1.0)
    assert spec.params == {"factor": 8}  # the (invalid) blur parameters are ignored
    assert logic.operator_spec("gaussian_blur", kernel_size=9, blur_sigma=2.0).params == {
        "kernel_size": 9, "sigma": 2.0}
    assert logic.operator_spec("hdr", hdr_scale=3.0).params == {"scale": 3.0}
    assert logic.operator_spec("phase_retrieval", pr_oversample=1.0).params == {"oversample": 1.0}
    assert logic.operator_spec("identity").params == {}
    random = logic.operator_spec("inpainting", mask_type="random", random_fraction=0.3, seed=5)
    assert random.params == {"mask_type": "random", "seed": 5, "fraction": 0.3}


@pytest.mark.parametrize("operator", ["gaussian_blur", "motion_blur"])
@pytest.mark.parametrize("kernel_size", [4, 0, -3])
def test_even_or_non_positive_kernel_size_is_rejected(operator, kernel_size):
    with pytest.raises(ValueError, match=f"kernel_size: expected a positive odd .* got {kernel_size}"):
        logic.operator_spec(operator, kernel_size=kernel_size)


def test_operator_spec_rejects_unknown_values():
    with pytest.raises(ValueError, match="unknown operator 'deblur'; valid: super_resolution"):
        logic.operator_spec("deblur")
    with pytest.raises(ValueError, match="sr_factor: expected one of 2, 4, 8"):
        logic.operator_spec("super_resolution", sr_factor="3")
    with pytest.raises(ValueError, match="mask_type"):
        logic.operator_spec("inpainting", mask_type="circle")
    with pytest.raises(ValueError, match="box_position"):
        logic.operator_spec("inpainting", box_position="corner")
    with pytest.raises(ValueError, match="a mask is only used by inpainting"):
        ntypes.OperatorSpec("identity", {}, torch.ones(1, 1, 2, 2))


def test_operator_spec_builds_a_fresh_operator_per_call():
    spec = logic.operator_spec("inpainting", mask_type="random", seed=3)
    a, b = spec.build((8, 8)), spec.build((8, 8))
    assert a is not b
    torch.testing.assert_close(a.mask, b.mask)
    assert spec.build((6, 4)).mask.shape[-2:] == (6, 4)


# ---------------------------------------------------------------------------------------------------
# Simulate Measurement
# ---------------------------------------------------------------------------------------------------


def test_simulate_super_resolution_matches_the_core_operator_and_noise():
    img = comfy_image(2, 16, 12)
    spec = logic.operator_spec("super_resolution", sr_factor="4")
    m, view = logic.simulate(img, spec, noise="gaussian", sigma=0.1, seed=7)
    clean = ops.make("super_resolution", factor=4)(to_core(img))
    for i in range(2):  # image i uses the generator seeded with seed + i
        noise = ops.GaussianNoise(0.1)(clean[i:i + 1], generator=torch.Generator().manual_seed(7 + i))
        torch.testing.assert_close(m.y[i:i + 1], noise)
    assert m.image_size == (16, 12) and m.channels == 3 and m.batch_size == 2
    assert m.sigma_y == pytest.approx(0.1) and m.noise_name == "gaussian"
    # the view shows the 4x3 measurement at the clean size, pixel by pixel
    assert view.shape == (2, 16, 12, 3)
    torch.testing.assert_close(view[:, :4, :4], convert.samplers_to_image(m.y)[:, :1, :1].expand(2, 4, 4, 3))


def test_simulate_batch_is_independent_runs():
    img = comfy_image(3, 8, 8, seed=2)
    spec = logic.operator_spec("gaussian_blur", kernel_size=5, blur_sigma=1.0)
    batch, _ = logic.simulate(img, spec, noise="gaussian", sigma=0.05, seed=11)
    for i in range(3):
        alone, _ = logic.simulate(img[i:i + 1], spec, noise="gaussian", sigma=0.05, seed=11 + i)
        torch.testing.assert_close(batch.y[i:i + 1], alone.y)


def test_simulate_seed_wraps_at_the_widget_maximum():
    img = comfy_image(2, 8, 8)
    top, _ = logic.simulate(img, logic.operator_spec("identity"), sigma=0.1, seed=2**64 - 1)  # ComfyUI's max
    wrapped, _ = logic.simulate(img[1:], logic.operator_spec("identity"), sigma=0.1, seed=0)
    torch.testing.assert_close(top.y[1:], wrapped.y)


def test_simulate_without_noise_is_the_operator():
    img = comfy_image(1, 10, 8)
    m, view = logic.simulate(img, logic.operator_spec("hdr", hdr_scale=2.0), noise="none")
    torch.testing.assert_close(m.y, torch.clamp(2.0 * to_core(img), -1, 1))
    assert m.sigma_y == 0.0
    torch.testing.assert_close(view, convert.samplers_to_image(m.y))


def test_poisson_sigma_y_matches_the_empirical_noise():
    img = torch.full((1, 64, 64, 3), 0.5)
    spec = logic.operator_spec("identity")
    m, _ = logic.simulate(img, spec, noise="poisson", poisson_rate=1.0, seed=0)
    empirical = float((m.y - to_core(img)).pow(2).mean().sqrt())
    # Poisson counts 255 * rate * p with p = 0.5: std of y = 2 * sqrt(p / (255 rate))
    assert m.sigma_y == pytest.approx(2 * math.sqrt(0.5 / 255), rel=1e-6)
    assert empirical == pytest.approx(m.sigma_y, rel=0.05)


def test_simulate_size_errors():
    with pytest.raises(ValueError, match=r"image: size 18x16 .* not divisible by the super-resolution fac"):
        logic.simulate(comfy_image(1, 18, 16), logic.operator_spec("super_resolution", sr_factor="4"))
    with pytest.raises(ValueError, match="image: size 8x8 .* too small for kernel_size 61"):
        logic.simulate(comfy_image(1, 8, 8), logic.operator_spec("gaussian_blur", kernel_size=61))
    with pytest.raises(ValueError, match="box_size: a 20x20 box does not fit"):
        logic.simulate(comfy_image(1, 16, 16), logic.operator_spec("inpainting", box_size=20))
    with pytest.raises(ValueError, match="image: contains 1 NaN"):
        img = comfy_image(1, 8, 8)
        img[0, 1, 1, 1] = float("nan")
        logic.simulate(img, logic.operator_spec("identity"))
    with pytest.raises(ValueError, match="noise: expected one of gaussian, poisson, none"):
        logic.simulate(comfy_image(1, 8, 8), logic.operator_spec("identity"), noise="salt")


def test_simulate_inpainting_with_a_user_mask():
    img = comfy_image(2, 12, 10)
    mask = torch.zeros(1, 12, 10)
    mask[0, 3:7, 2:6] = 1.0
    spec = logic.operator_spec("inpainting", mask=mask)
    m, view = logic.simulate(img, spec, noise="none")
    x = to_core(img)
    missing = mask[0].bool()
    assert torch.all(m.y[:, :, missing] == 0)
    torch.testing.assert_close(m.y[:, :, ~missing], x[:, :, ~missing])
    assert torch.allclose(view[:, missing], torch.tensor(0.5))  # missing pixels show mid-gray


def test_simulate_inpainting_mask_size_and_batch_errors():
    spec = logic.operator_spec("inpainting", mask=torch.zeros(1, 12, 10))
    with pytest.raises(ValueError, match=r"mask: the operator's MASK has size \(12, 10\) .* \(12, 12\)"):
        logic.simulate(comfy_image(1, 12, 12), spec)
    spec2 = logic.operator_spec("inpainting", mask=torch.zeros(2, 12, 10))
    with pytest.raises(ValueError, match="mask: the operator's MASK has batch size 2 .* 3 images"):
        logic.simulate(comfy_image(3, 12, 10), spec2)


def test_centered_box():
    img = comfy_image(1, 20, 16)
    spec = logic.operator_spec("inpainting", box_size=6, box_position="center")
    m, _ = logic.simulate(img, spec, noise="none")
    missing = (m.y[0, 0] == 0).nonzero()
    assert missing.min(0).values.tolist() == [7, 5]  # (20 - 6) // 2, (16 - 6) // 2
    assert missing.max(0).values.tolist() == [12, 10]


def test_simulate_phase_retrieval_view_is_the_log_magnitude():
    img = comfy_image(1, 16, 16)
    m, view = logic.simulate(img, logic.operator_spec("phase_retrieval", pr_oversample=2.0), noise="none")
    padded = torch.nn.functional.pad(to_core(img), (4, 4, 4, 4))
    spectrum = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(padded, dim=(-2, -1)), norm="ortho"),
                                  dim=(-2, -1)).abs()
    torch.testing.assert_close(m.y, spectrum, atol=1e-5, rtol=1e-5)
    assert view.shape == (1, 24, 24, 3)
    expected = torch.log1p(spectrum) / torch.log1p(spectrum).max()
    torch.testing.assert_close(view[..., 0], expected[:, 0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Measurement from Image
# ---------------------------------------------------------------------------------------------------


def test_measurement_from_image_super_resolution_target_size():
    photo = comfy_image(1, 128, 128)  # a 128 px photo and SR x4 -> a 512 px target
    m = logic.measurement_from_image(photo, logic.operator_spec("super_resolution", sr_factor="4"), "none")
    assert m.image_size == (512, 512)
    torch.testing.assert_close(m.y, to_core(photo))
    assert m.operator.measurement_shape(m.image_shape) == tuple(m.y.shape)
    with pytest.raises(ValueError, match="latent: size 256x256 .* does not match .* 512x512"):
        m.check_image_size((256, 256), "latent")


def test_measurement_from_image_same_size_operators_and_errors():
    img = comfy_image(2, 24, 20)
    m = logic.measurement_from_image(img, logic.operator_spec("motion_blur", kernel_size=7), "gaussian", 0.02)
    assert m.image_size == (24, 20) and m.sigma_y == pytest.approx(0.02)
    with pytest.raises(ValueError, match="phase-retrieval measurement is a Fourier magnitude"):
        logic.measurement_from_image(img, logic.operator_spec("phase_retrieval"))
    with pytest.raises(ValueError, match=r"mask: the operator's MASK has size \(24, 24\)"):
        logic.measurement_from_image(img, logic.operator_spec("inpainting", mask=torch.zeros(1, 24, 24)))


# ---------------------------------------------------------------------------------------------------
# Target Latent
# ---------------------------------------------------------------------------------------------------


def test_back_projections():
    img = comfy_image(1, 16, 16)
    x = to_core(img)
    sr, _ = logic.simulate(img, logic.operator_spec("super_resolution", sr_factor="2"), noise="none")
    bp = logic.back_projection(sr)
    torch.testing.assert_close(sr.operator(bp), sr.y, atol=1e-5, rtol=1e-5)  # a right-inverse
    inp, _ = logic.simulate(img, logic.operator_spec("inpainting", box_size=8), noise="none")
    torch.testing.assert_close(logic.back_projection(inp), inp.y)
    hdr, _ = logic.simulate(img * 0.5 + 0.25, logic.operator_spec("hdr", hdr_scale=1.5), noise="none")
    torch.testing.assert_close(logic.back_projection(hdr), to_core(img * 0.5 + 0.25), atol=1e-6, rtol=1e-6)
    blur, _ = logic.simulate(img, logic.operator_spec("gaussian_blur", kernel_size=5), noise="none")
    torch.testing.assert_close(logic.back_projection(blur), blur.y)
    pr, _ = logic.simulate(img, logic.operator_spec("phase_retrieval"), noise="none")
    with pytest.raises(ValueError, match="phase retrieval has no back-projection"):
        logic.back_projection(pr)
    assert x.shape == bp.shape


def test_target_latent_empty_and_measurement_init():
    img = comfy_image(2, 32, 24)
    m, _ = logic.simulate(img, logic.operator_spec("super_resolution", sr_factor="4"), noise="none")
    samples, init_image = logic.target_latent(m, 8, 4, "empty")
    assert samples.shape == (2, 4, 4, 3) and not samples.any()
    torch.testing.assert_close(init_image, convert.samplers_to_image(logic.back_projection(m)))

    seen = {}

    def encode(image: torch.Tensor) -> torch.Tensor:  # a stand-in VAE: 8x average pooling, 4 channels
        seen["image"] = image
        pooled = torch.nn.functional.avg_pool2d(image.permute(0, 3, 1, 2), 8)
        return torch.cat([pooled, pooled[:, :1]], dim=1)

    samples, _ = logic.target_latent(m, 8, 4, "measurement", encode=encode)
    torch.testing.assert_close(seen["image"], init_image)
    assert samples.shape == (2, 4, 4, 3)
    with pytest.raises(ValueError, match=r"vae: encoding a 32x24 image gave a latent of shape \(2, 3, 4, 3"):
        logic.target_latent(m, 8, 4, "measurement", encode=lambda im: encode(im)[:, :3])


def test_target_latent_errors():
    m, _ = logic.simulate(comfy_image(1, 20, 16), logic.operator_spec("identity"), noise="none")
    with pytest.raises(ValueError, match="measurement target size: 20x16 .* multiple of .* 8"):
        logic.target_latent(m, 8, 4, "empty")
    pr, _ = logic.simulate(comfy_image(1, 16, 16), logic.operator_spec("phase_retrieval"), noise="none")
    samples, gray = logic.target_latent(pr, 8, 4, "empty")  # empty works, the init image is mid-gray
    assert samples.shape == (1, 4, 2, 2) and torch.allclose(gray, torch.tensor(0.5))
    with pytest.raises(ValueError, match="phase retrieval has no back-projection"):
        logic.target_latent(pr, 8, 4, "measurement", encode=lambda im: im)
    with pytest.raises(ValueError, match="init: expected one of empty, measurement"):
        logic.target_latent(pr, 8, 4, "noise")


# ---------------------------------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------------------------------


def test_equireg_spec_validation_and_options():
    spec = ntypes.EquiRegSpec(source="vae_decoder", vae=object(), alpha=0.5)
    assert set(spec.options()) <= set(EquiReg.OPTIONS)
    assert spec.options()["alpha"] == 0.5
    with pytest.raises(ValueError, match="source must be one of vae_encoder"):
        ntypes.EquiRegSpec(source="unet")
    with pytest.raises(ValueError, match="needs file_path"):
        ntypes.EquiRegSpec(source="file")
    with pytest.raises(ValueError, match="needs a VAE"):
        ntypes.EquiRegSpec(source="vae_encoder")


def test_measurement_validation():
    with pytest.raises(ValueError, match="noise_name"):
        ntypes.Measurement(operator=ops.make("identity"), y=torch.zeros(1, 3, 2, 2), image_size=(2, 2),
                           noise_name="salt")


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------


def test_metrics_psnr_ssim_definitions():
    ref = comfy_image(1, 24, 24, seed=1)
    scale = torch.tensor([0.01, 0.1]).view(2, 1, 1, 1)
    noise = torch.randn(2, 24, 24, 3, generator=torch.Generator().manual_seed(0)) * scale
    image = ref + noise
    result = logic.compute_metrics(image, ref, use_lpips=False)
    for i in range(2):  # PSNR on the [0, 1] intensity range: 10 log10(1 / MSE)
        mse = float(((image[i] - ref[0]) ** 2).mean())
        assert result["psnr"][i] == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)
    assert result["psnr_mean"] == pytest.approx(sum(result["psnr"]) / 2)
    assert result["ssim"][0] > result["ssim"][1]  # more noise, less structure
    same = logic.compute_metrics(ref, ref, use_lpips=False)
    assert same["psnr"] == [math.inf] and same["ssim"][0] == pytest.approx(1.0)
    text = logic.metrics_text(result, "DPS")
    assert text.startswith(f"DPS: PSNR {result['psnr_mean']:.2f} dB, SSIM {result['ssim_mean']:.4f}")
    assert "#1: PSNR" in text
    assert "inf dB" in logic.metrics_text(same)


def test_metrics_size_mismatch_names_the_reference():
    with pytest.raises(ValueError, match=r"reference: size \(16, 16\) .* image size \(24, 24\)"):
        logic.compute_metrics(comfy_image(1, 24, 24), comfy_image(1, 16, 16))
    with pytest.raises(ValueError, match="image has batch size 2 but reference has batch size 3"):
        logic.compute_metrics(comfy_image(2, 8, 8), comfy_image(3, 8, 8))


def test_metrics_say_when_lpips_is_not_available(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # import fails
    result = logic.compute_metrics(comfy_image(1, 8, 8), comfy_image(1, 8, 8, seed=3))
    assert result["lpips"] is None
    assert "LPIPS not computed: the 'lpips' package is not installed" in logic.metrics_text(result)


def test_metrics_use_lpips_only_with_local_weights(monkeypatch, tmp_path):
    """With an `lpips` package present, LPIPS needs the AlexNet weights in torch's hub cache; a stand-in
    package (mean absolute difference) checks the plumbing without downloading anything."""

    class FakeLPIPS(torch.nn.Module):
        def __init__(self, net: str, verbose: bool) -> None:
            super().__init__()
            assert net == "alex"

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a - b).abs().mean(dim=(1, 2, 3), keepdim=True)

    monkeypatch.setitem(sys.modules, "lpips", types.SimpleNamespace(LPIPS=FakeLPIPS))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    image, ref = comfy_image(2, 8, 8), comfy_image(1, 8, 8, seed=3)
    missing = logic.compute_metrics(image, ref)
    assert missing["lpips"] is None and "AlexNet weights are not on this machine" in missing["lpips_note"]
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / logic.LPIPS_BACKBONE_FILE).write_bytes(b"")
    found = logic.compute_metrics(image, ref)
    expected = (to_core(image) - to_core(ref)).abs().mean(dim=(1, 2, 3))
    assert found["lpips"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert f"LPIPS {found['lpips_mean']:.4f}" in logic.metrics_text(found)
