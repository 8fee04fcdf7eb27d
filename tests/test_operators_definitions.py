"""Operator-specific definitions: bicubic resizer weights, Gaussian and motion kernels, inpainting masks and
phase retrieval. Expected values are derived here from the definitions, independently of the code."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from samplers import operators as ops


def keys_cubic(t: float) -> float:
    """Keys' cubic convolution kernel, a = -0.5."""
    t = abs(t)
    if t <= 1:
        return 1.5 * t ** 3 - 2.5 * t ** 2 + 1
    if t <= 2:
        return -0.5 * t ** 3 + 2.5 * t ** 2 - 4 * t + 2
    return 0.0


def expected_resize_row(i: int, n_in: int, factor: int) -> np.ndarray:
    """Row i of the antialiased cubic down-sampling matrix, from the definition.

    Output pixel i (0-based) of ``n_out = ceil(n_in / factor)`` pixels, centred on the input, sits at input
    coordinate ``c = (i + 0.5 - (n_out - n_in / factor) / 2) * factor - 0.5``; input pixel j gets weight
    ``cubic((j - c) / factor)`` (kernel stretched by the factor), normalised to sum 1, with indices outside
    the image mirrored (half-sample symmetric: -1 -> 0, n -> n-1).
    """
    n_out = math.ceil(n_in / factor)
    c = (i + 0.5 - (n_out - n_in / factor) / 2) * factor - 0.5
    row = np.zeros(n_in)
    taps = range(math.floor(c) - 2 * factor - 1, math.ceil(c) + 2 * factor + 2)
    weights = {j: keys_cubic((j - c) / factor) for j in taps}
    total = sum(weights.values())
    for j, w in weights.items():
        k = j % (2 * n_in)
        k = k if k < n_in else 2 * n_in - 1 - k
        row[k] += w / total
    return row


@pytest.mark.parametrize("factor", [2, 4, 8])
@pytest.mark.parametrize("n_in", [256, 37, 31])
def test_resize_weights_match_cubic_definition(factor: int, n_in: int) -> None:
    op = ops.SuperResolution(factor)
    mh, mw = op.weight_matrices((n_in, n_in))
    assert mh.shape == (math.ceil(n_in / factor), n_in)
    expected = np.stack([expected_resize_row(i, n_in, factor) for i in range(mh.shape[0])])
    np.testing.assert_allclose(mh.numpy(), expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(mh.sum(dim=1), torch.ones(mh.shape[0], dtype=torch.float64))


def test_resize_interior_weights_x2_x4() -> None:
    # At 256 -> 128 (x2) an interior output pixel i sits at c = 2i + 0.5, halfway between input pixels
    # 2i and 2i + 1; its taps are at distances +-0.5 .. +-3.5 and, stretched by 2, weigh cubic(d / 2).
    mh, _ = ops.SuperResolution(2).weight_matrices((256, 256))
    d = np.array([3.5, 2.5, 1.5, 0.5, 0.5, 1.5, 2.5, 3.5])
    w = np.array([keys_cubic(t / 2) for t in d])
    np.testing.assert_allclose(mh[40, 80 - 3:80 + 5].numpy(), w / w.sum(), atol=1e-14)
    assert mh[40].sum().item() == pytest.approx(1.0)
    assert np.count_nonzero(mh[40].numpy()) == 8
    # x4: c = 4i + 1.5, 16 taps at +-0.5 .. +-7.5 weighted cubic(d / 4)
    mh4, _ = ops.SuperResolution(4).weight_matrices((256, 256))
    d = np.abs(np.arange(4 * 20 - 6, 4 * 20 + 10) - (4 * 20 + 1.5))
    w = np.array([keys_cubic(t / 4) for t in d])
    np.testing.assert_allclose(mh4[20, 4 * 20 - 6:4 * 20 + 10].numpy(), w / w.sum(), atol=1e-14)


def test_sr_output_size_and_constant_image() -> None:
    op = ops.make("super_resolution", factor=4)
    x = torch.full((2, 3, 37, 31), 0.3, dtype=torch.float64)
    y = op(x)
    assert y.shape == (2, 3, 10, 8)
    torch.testing.assert_close(y, torch.full_like(y, 0.3))
    assert ops.make("super_resolution", factor=4)(torch.zeros(1, 3, 256, 256)).shape == (1, 3, 64, 64)


def test_sr_forward_is_separable_matrix_product() -> None:
    # forward applies the row matrix to the rows and the column matrix to the columns of every channel
    x = torch.randn(1, 1, 37, 31, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    op = ops.make("super_resolution", factor=2)
    mh, mw = op.weight_matrices((37, 31))
    torch.testing.assert_close(op(x)[0, 0], mh @ x[0, 0] @ mw.T)
    assert (mh < 0).any()  # cubic negative lobes


def test_dps_backprojection_is_nearest_upsampling_not_adjoint() -> None:
    op = ops.make("super_resolution", factor=4)
    y = torch.arange(6, dtype=torch.float64).reshape(1, 1, 2, 3)
    up = op.dps_backprojection(y)
    assert up.shape == (1, 1, 8, 12)
    assert torch.equal(up[0, 0, :4, :4], torch.zeros(4, 4, dtype=torch.float64))
    assert torch.equal(up[0, 0, 4:, 8:], torch.full((4, 4), 5.0, dtype=torch.float64))
    op(torch.zeros(1, 1, 8, 12, dtype=torch.float64))
    assert not torch.allclose(up, op.adjoint(y))
    assert op.dps_backprojection(y, size=(7, 10)).shape == (1, 1, 7, 10)


@pytest.mark.parametrize("size,sigma", [(61, 3.0), (7, 1.5), (5, 3.0), (9, 0.7), (1, 1.0)])
def test_gaussian_kernel_matches_scipy(size: int, sigma: float) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    expected = ndimage.gaussian_filter(delta, sigma=sigma)
    kernel = ops.gaussian_kernel(size, sigma)
    np.testing.assert_allclose(kernel.numpy(), expected, rtol=1e-10, atol=1e-14)
    op = ops.make("gaussian_blur", kernel_size=size, sigma=sigma)
    np.testing.assert_allclose(op.kernel.double().numpy(), expected, rtol=1e-6, atol=1e-9)


def test_gaussian_kernel_parameters_validated() -> None:
    with pytest.raises(ValueError, match="sigma"):
        ops.make("gaussian_blur", sigma=0.0)
    with pytest.raises(ValueError, match="sigma"):
        ops.make("gaussian_blur", sigma=-1.0)


def test_motion_kernel_properties_and_seeding() -> None:
    k0 = ops.motion_kernel(61, 0.5, seed=0)
    assert k0.shape == (61, 61) and k0.dtype == torch.float32
    assert (k0 >= 0).all()
    assert k0.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(k0, ops.motion_kernel(61, 0.5, seed=0))
    assert not torch.equal(k0, ops.motion_kernel(61, 0.5, seed=1))
    # a trajectory, not a point or a flat field: support between one pixel and the whole kernel
    support = int((k0 > 0).sum())
    assert 10 < support < 61 * 61 // 2
    op = ops.make("motion_blur", kernel_size=31, intensity=0.9, seed=5)
    assert torch.equal(op.kernel, ops.motion_kernel(31, 0.9, seed=5))
    for intensity in (0.0, 1.0):
        k = ops.motion_kernel(15, intensity, seed=3)
        assert (k >= 0).all() and k.sum().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="intensity"):
        ops.make("motion_blur", intensity=1.5)
    with pytest.raises(ValueError, match="seed"):
        ops.make("motion_blur", seed=-1)


def test_blur_of_constant_is_constant() -> None:
    # kernels summing to one preserve constants (reflection padding keeps the border constant too)
    x = torch.full((1, 3, 40, 40), -0.4, dtype=torch.float64)
    for op in (ops.make("gaussian_blur", kernel_size=21, sigma=3.0), ops.make("motion_blur", kernel_size=21)):
        torch.testing.assert_close(op(x), x, rtol=1e-6, atol=1e-6)


def test_inpainting_box_mask() -> None:
    op = ops.make("inpainting", mask_type="box", position=(3, 5))
    x = torch.ones(2, 3, 37, 31, dtype=torch.float64)
    y = op(x)
    expected = torch.ones(37, 31, dtype=torch.float64)
    expected[3:3 + 18, 5:5 + 15] = 0  # default box: half the image in each dimension
    for b in range(2):
        for c in range(3):
            assert torch.equal(y[b, c], expected)
    # random placement with DPS's margins (half-open range [16, H - 16 - h)), as in the reference at 256
    tops, lefts = set(), set()
    for seed in range(40):
        m = ops.box_mask((256, 256), (128, 128), seed=seed)
        rows = torch.nonzero((m == 0).any(dim=1)).flatten()
        cols = torch.nonzero((m == 0).any(dim=0)).flatten()
        assert len(rows) == 128 and len(cols) == 128
        assert 16 <= rows[0] < 256 - 16 - 128 and 16 <= cols[0] < 256 - 16 - 128
        tops.add(int(rows[0]))
        lefts.add(int(cols[0]))
    assert len(tops) > 10 and len(lefts) > 10
    assert torch.equal(ops.box_mask((64, 64), seed=4), ops.box_mask((64, 64), seed=4))
    # small image: the margins do not fit, the box is still placed inside
    small = ops.box_mask((20, 20), (8, 8), seed=1)
    assert int((small == 0).sum()) == 64
    with pytest.raises(ValueError, match="does not fit"):
        ops.make("inpainting", box_size=(10, 10), position=(30, 0))(torch.zeros(1, 1, 37, 31))
    with pytest.raises(ValueError, match="box_size"):
        ops.box_mask((20, 20), (21, 8))


def test_inpainting_random_mask() -> None:
    op = ops.make("inpainting", mask_type="random", fraction=0.7, seed=3)
    x = torch.randn(1, 3, 37, 31, dtype=torch.float64)
    y = op(x)
    missing = y[0] == 0
    assert int(missing[0].sum()) == int(37 * 31 * 0.7)
    assert torch.equal(missing[0], missing[1]) and torch.equal(missing[0], missing[2])  # same across channels
    again = ops.make("inpainting", mask_type="random", fraction=0.7, seed=3)
    assert torch.equal(again(x), y)
    other = ops.make("inpainting", mask_type="random", fraction=0.7, seed=4)
    assert not torch.equal(other(x), y)
    with pytest.raises(ValueError, match="fraction"):
        ops.make("inpainting", mask_type="random", fraction=1.2)
    with pytest.raises(ValueError, match="mask_type"):
        ops.make("inpainting", mask_type="extreme")


def test_inpainting_mask_shapes_and_validation() -> None:
    base = (torch.rand(37, 31, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    x = torch.randn(2, 3, 37, 31, dtype=torch.float64)
    for mask in (base, base[None, None], base[None, None].expand(2, 1, 37, 31), base.bool()):
        y = ops.make("inpainting", mask=mask)(x)
        torch.testing.assert_close(y, x * base.double())
    per_sample = torch.stack([base, 1 - base])[:, None]
    op = ops.make("inpainting", mask=per_sample)
    y = op(x)
    torch.testing.assert_close(y[1], x[1] * (1 - base).double())
    with pytest.raises(ValueError, match="batch size"):
        op(torch.zeros(3, 3, 37, 31))
    with pytest.raises(ValueError, match="0 \\(missing\\) or 1"):
        ops.make("inpainting", mask=torch.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="shape"):
        ops.make("inpainting", mask=torch.ones(3, 4, 4))
    with pytest.raises(ValueError, match="size"):
        ops.make("inpainting", mask=base)(torch.zeros(1, 3, 36, 31))


def test_inpainting_lazy_and_eager_masks_agree() -> None:
    eager = ops.make("inpainting", mask_type="random", seed=9, image_size=(37, 31))
    lazy = ops.make("inpainting", mask_type="random", seed=9)
    assert lazy.mask is None
    x = torch.randn(1, 1, 37, 31)
    assert torch.equal(eager(x), lazy(x))
    assert lazy.mask.shape == (1, 1, 37, 31)
    # another size rebuilds the generated mask for that size
    assert lazy(torch.randn(1, 1, 20, 24)).shape == (1, 1, 20, 24)


def _centred_dft_magnitude(image: np.ndarray, pad_h: int, pad_w: int) -> np.ndarray:
    padded = np.pad(image, ((pad_h, pad_h), (pad_w, pad_w)))
    return np.abs(np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(padded), norm="ortho")))


def test_phase_retrieval_padding_and_values() -> None:
    op = ops.make("phase_retrieval", oversample=2.0)
    assert op.measurement_shape((1, 3, 256, 256)) == (1, 3, 384, 384)
    x = torch.rand(1, 3, 256, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = op(x)
    assert y.shape == (1, 3, 384, 384)
    # Parseval: the orthonormal FFT preserves energy, and zero padding adds none
    torch.testing.assert_close((y ** 2).sum(dim=(-2, -1)), (x ** 2).sum(dim=(-2, -1)), rtol=1e-10, atol=0)
    # odd sizes: int(2/8 * 37) = 9 rows, int(2/8 * 31) = 7 columns on each side; values from numpy's DFT
    small = torch.rand(2, 1, 37, 31, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ys = op(small)
    assert ys.shape == (2, 1, 37 + 18, 31 + 14)
    expected = _centred_dft_magnitude(small[1, 0].numpy(), 9, 7)
    np.testing.assert_allclose(ys[1, 0].numpy(), expected, atol=1e-12)
    # non-linear and sign-blind: |F(-x)| = |F(x)|
    assert not op.linear
    torch.testing.assert_close(op(-small), ys)
    # differentiable, as DPS needs
    xg = small.clone().requires_grad_(True)
    op(xg).sum().backward()
    assert torch.isfinite(xg.grad).all()
