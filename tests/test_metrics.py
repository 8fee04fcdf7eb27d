"""Sliced Wasserstein, PSNR and SSIM against their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from samplers.metrics import psnr, sliced_wasserstein, ssim

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- sliced W


def test_sw_zero_for_identical_and_permuted_samples() -> None:
    a = torch.randn(300, 5, generator=gen(0))
    assert float(sliced_wasserstein(a, a)) == 0.0
    perm = torch.randperm(300, generator=gen(1))
    assert float(sliced_wasserstein(a, a[perm])) == pytest.approx(0.0, abs=1e-12)
    # unequal counts: the empirical measure of a repeated twice is the same measure
    assert float(sliced_wasserstein(a, a.repeat(2, 1))) == pytest.approx(0.0, abs=1e-12)


def test_sw_of_a_translation_in_1d_is_its_length() -> None:
    a = torch.randn(400, generator=gen(2), dtype=F64)
    for v in (2.5, -0.75):
        assert float(sliced_wasserstein(a, a + v)) == pytest.approx(abs(v), rel=1e-12)
        assert float(sliced_wasserstein(a, a + v, p=1)) == pytest.approx(abs(v), rel=1e-12)
    # unequal counts: the same empirical measure written with 3x the atoms, translated
    assert float(sliced_wasserstein(a, a.repeat(3) + 1.25)) == pytest.approx(1.25, rel=1e-12)


def test_sw_1d_p1_matches_scipy_wasserstein_distance() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    a = torch.randn(137, generator=gen(3), dtype=F64)
    b = 0.5 * torch.randn(61, generator=gen(4), dtype=F64) + 0.3
    expected = scipy_stats.wasserstein_distance(a.numpy(), b.numpy())
    assert float(sliced_wasserstein(a, b, p=1)) == pytest.approx(expected, rel=1e-10)


def test_sw_unequal_counts_equals_sorted_formula_on_replicated_samples() -> None:
    # W2 between empirical measures with n and m atoms equals W2 between the same measures written with
    # lcm(n, m) equally weighted atoms (each atom repeated), where the sorted-sample formula applies.
    a = torch.randn(6, 3, generator=gen(5), dtype=F64)
    b = torch.randn(4, 3, generator=gen(6), dtype=F64) + 1.0
    got = sliced_wasserstein(a, b, n_directions=64, generator=gen(7))
    expected = sliced_wasserstein(a.repeat_interleave(2, 0), b.repeat_interleave(3, 0), n_directions=64,
                                  generator=gen(7))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_sw_symmetric_and_distinguishes_distributions() -> None:
    a = torch.randn(500, 4, generator=gen(8))
    b = torch.randn(500, 4, generator=gen(9))
    shifted = torch.randn(500, 4, generator=gen(10)) + torch.tensor([1.0, 0.0, -1.0, 0.5])
    ab = sliced_wasserstein(a, b, generator=gen(11))
    assert float(ab) == pytest.approx(float(sliced_wasserstein(b, a, generator=gen(11))), rel=1e-12)
    assert float(ab) < 0.5 * float(sliced_wasserstein(a, shifted, generator=gen(11)))
    # default generator: reproducible
    assert float(sliced_wasserstein(a, b)) == float(sliced_wasserstein(a, b))


def test_sw_translation_in_d_dims_averages_over_directions() -> None:
    # for a translation by v, W2 along theta is |theta . v| and E[(theta . v)^2] = |v|^2 / d
    a = torch.randn(50, 6, generator=gen(12), dtype=F64)
    v = torch.tensor([3.0, -1.0, 0.0, 2.0, 0.5, 1.0], dtype=F64)
    got = float(sliced_wasserstein(a, a + v, n_directions=8192, generator=gen(13)))
    assert got == pytest.approx(float(v.norm()) / math.sqrt(6), rel=0.05)


def test_sw_bad_arguments() -> None:
    a = torch.randn(10, 3)
    with pytest.raises(ValueError, match="dimension"):
        sliced_wasserstein(a, torch.randn(10, 2))
    with pytest.raises(ValueError, match="n_directions"):
        sliced_wasserstein(a, a, n_directions=0)
    with pytest.raises(ValueError, match="p"):
        sliced_wasserstein(a, a, p=0.5)
    with pytest.raises(TypeError):
        sliced_wasserstein(a.long(), a)


# ---------------------------------------------------------------------------------------------- PSNR


def test_psnr_of_known_mse() -> None:
    ref = torch.rand(3, 2, 9, 7, generator=gen(14)) * 2 - 1
    offsets = torch.tensor([0.1, 0.25, 0.5]).view(3, 1, 1, 1)
    x = ref + offsets
    got = psnr(x, ref, data_range=2.0)
    expected = 10 * torch.log10(4.0 / offsets.flatten().double() ** 2)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)
    assert torch.isinf(psnr(ref, ref, 2.0)).all()
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, ref, data_range=0.0)
    with pytest.raises(ValueError, match="same shape"):
        psnr(x, ref[:, :1], 2.0)


# ---------------------------------------------------------------------------------------------- SSIM


def ssim_direct(x: torch.Tensor, y: torch.Tensor, data_range: float, size: int = 11,
                sigma: float = 1.5) -> float:
    """SSIM of two single-channel images (H, W) by explicit loops over the valid window positions."""
    c = torch.arange(size, dtype=F64) - (size - 1) / 2
    g = torch.exp(-(c**2) / (2 * sigma**2))
    w = torch.outer(g, g)
    w = w / w.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vals = []
    for i in range(x.shape[0] - size + 1):
        for j in range(x.shape[1] - size + 1):
            px, py = x[i:i + size, j:j + size].double(), y[i:i + size, j:j + size].double()
            mx, my = (w * px).sum(), (w * py).sum()
            vx, vy = (w * (px - mx) ** 2).sum(), (w * (py - my) ** 2).sum()
            cxy = (w * (px - mx) * (py - my)).sum()
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(torch.stack(vals).mean())


def test_ssim_matches_direct_formula() -> None:
    ref = torch.rand(2, 2, 14, 13, generator=gen(15))
    x = (ref + 0.15 * torch.randn(2, 2, 14, 13, generator=gen(16))).clamp(0, 1)
    got = ssim(x, ref, data_range=1.0)
    assert got.shape == (2,)
    for b in range(2):
        expected = sum(ssim_direct(x[b, c], ref[b, c], 1.0) for c in range(2)) / 2
        assert float(got[b]) == pytest.approx(expected, rel=1e-9)
    # images smaller than the window use the largest odd window that fits
    small = ssim(x[:, :, :6, :5], ref[:, :, :6, :5], 1.0)
    assert float(small[0]) == pytest.approx(
        sum(ssim_direct(x[0, c, :6, :5], ref[0, c, :6, :5], 1.0, size=5) for c in range(2)) / 2, rel=1e-9)


def test_ssim_known_values() -> None:
    x = torch.rand(2, 3, 37, 31, generator=gen(17)) * 2 - 1
    torch.testing.assert_close(ssim(x, x, data_range=2.0), torch.ones(2, dtype=F64))
    y = torch.rand(2, 3, 37, 31, generator=gen(18)) * 2 - 1
    torch.testing.assert_close(ssim(x, y, 2.0), ssim(y, x, 2.0))
    assert (ssim(x, y, 2.0) < 0.2).all()
    # constant images a and b: variances vanish, SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.3, 0.7
    c1 = 0.01**2
    got = ssim(torch.full((1, 1, 16, 16), a), torch.full((1, 1, 16, 16), b), 1.0)
    assert float(got) == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-6)
    with pytest.raises(ValueError, match="window_size"):
        ssim(x, x, 2.0, window_size=4)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        ssim(x[0], x[0], 2.0)
