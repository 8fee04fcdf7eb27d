"""Distribution and image metrics (pure PyTorch).

* :func:`sliced_wasserstein`: sliced Wasserstein distance between two sample clouds, the metric of
  the GMM posterior benchmark (``bench/gmm.py``).
* :func:`psnr` and :func:`ssim`: per-image full-reference image quality, used by the Metrics node.
  They take (B, C, H, W) images and an explicit ``data_range`` (the width of the value range:
  1 for images in [0, 1], 2 for the project's [-1, 1] images).

All results are computed in float64 and returned in float64 (per image for psnr/ssim).
"""

from __future__ import annotations

import math

import torch

__all__ = ["psnr", "sliced_wasserstein", "ssim"]

_F64 = torch.float64


def _check_samples(x: object, what: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        got = getattr(x, "dtype", type(x).__name__)
        raise TypeError(f"{what}: expected a real floating-point tensor, got {got}")
    if x.dim() == 1:
        x = x[:, None]
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"{what}: expected samples of shape (n, d) or (n,), got {tuple(x.shape)}")
    return x


def _wasserstein_1d_pp(pa: torch.Tensor, pb: torch.Tensor, p: float) -> torch.Tensor:
    """W_p^p between the empirical measures of the columns of pa (n, L) and pb (m, L), per column."""
    qa = torch.sort(pa, dim=0).values
    qb = torch.sort(pb, dim=0).values
    n, m = qa.shape[0], qb.shape[0]
    if n == m:
        return (qa - qb).abs().pow(p).mean(0)
    # Quantile matching: both quantile functions are piecewise constant, with jumps at the levels i/n and
    # j/m; on each interval between consecutive merged levels both are constant, so the integral
    # int_0^1 |F_a^-1(u) - F_b^-1(u)|^p du is an exact finite sum.
    levels = torch.cat([torch.arange(1, n + 1, dtype=_F64) / n, torch.arange(1, m + 1, dtype=_F64) / m])
    levels = torch.sort(levels).values.to(pa.device)
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    mid = levels - 0.5 * widths
    ia = torch.clamp((mid * n).floor().long(), max=n - 1)
    ib = torch.clamp((mid * m).floor().long(), max=m - 1)
    return (widths[:, None] * (qa[ia] - qb[ib]).abs().pow(p)).sum(0)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, n_directions: int = 256,
                       generator: torch.Generator | None = None, p: float = 2) -> torch.Tensor:
    """Sliced Wasserstein-p distance between the samples ``a`` (n, d) and ``b`` (m, d).

    ``n_directions`` unit directions theta_l are drawn uniformly on the sphere (normalised Gaussian
    vectors, from ``generator`` on the CPU, or from a generator seeded with 0 when None, so the value
    is reproducible). For each direction the exact 1-D W_p between the empirical distributions of
    ``a @ theta_l`` and ``b @ theta_l`` is computed: with n == m the sorted-sample formula
    ``mean_i |a_(i) - b_(i)|^p``, otherwise the same integral of the two quantile functions over the
    merged quantile levels {i/n} U {j/m}. The result is ``(mean_l W_p^p(theta_l))^(1/p)``, i.e. for
    p = 2 the square root of the mean squared 1-D W2. 1-D inputs (n,) are treated as (n, 1); there the
    value is the exact 1-D W_p. Returns a float64 scalar tensor (NaN if the samples contain NaN).
    """
    a = _check_samples(a, "sliced_wasserstein a")
    b = _check_samples(b, "sliced_wasserstein b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"sliced_wasserstein: a and b must have the same dimension, got {a.shape[1]} and "
                         f"{b.shape[1]}")
    if isinstance(n_directions, bool) or not isinstance(n_directions, int) or n_directions < 1:
        raise ValueError(f"sliced_wasserstein n_directions: expected an int >= 1, got {n_directions!r}")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not (math.isfinite(p) and p >= 1):
        raise ValueError(f"sliced_wasserstein p: expected a finite number >= 1, got {p!r}")
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(0)
    d = a.shape[1]
    theta = torch.randn(n_directions, d, generator=generator, dtype=_F64, device=generator.device)
    theta = theta / theta.norm(dim=1, keepdim=True)
    theta = theta.to(a.device)
    pa = a.to(_F64) @ theta.T
    pb = b.to(_F64).to(a.device) @ theta.T
    return _wasserstein_1d_pp(pa, pb, float(p)).mean().pow(1.0 / float(p))


def _check_images(x: object, ref: object, data_range: object,
                  what: str) -> tuple[torch.Tensor, torch.Tensor, float]:
    for name, t in (("x", x), ("ref", ref)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{what} {name}: expected a real floating-point tensor (B, C, H, W), "
                            f"got {getattr(t, 'dtype', type(t).__name__)}")
        if t.dim() != 4 or min(t.shape) == 0:
            raise ValueError(f"{what} {name}: expected a non-empty image batch (B, C, H, W), "
                             f"got {tuple(t.shape)}")
    if x.shape != ref.shape:
        raise ValueError(f"{what}: x and ref must have the same shape, got {tuple(x.shape)} and "
                         f"{tuple(ref.shape)}")
    if isinstance(data_range, bool) or not isinstance(data_range, (int, float)):
        raise TypeError(f"{what} data_range: expected a number > 0, got {data_range!r}")
    if not (math.isfinite(data_range) and data_range > 0):
        raise ValueError(f"{what} data_range: expected a finite number > 0, got {data_range}")
    return x.to(_F64), ref.to(_F64).to(x.device), float(data_range)


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float) -> torch.Tensor:
    """Peak signal-to-noise ratio per image (B,), in dB: ``10 log10(data_range^2 / MSE)``.

    The MSE is the mean over C, H and W; identical images give +inf.
    """
    x, ref, data_range = _check_images(x, ref, data_range, "psnr")
    mse = (x - ref).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(data_range**2 / mse)


def _gaussian_window(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    coords = torch.arange(size, dtype=_F64, device=device) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()


def _filter(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' filtering of every channel of x (B, C, H, W) with the 1-D window g."""
    c = x.shape[1]
    k = g.numel()
    x = torch.nn.functional.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return torch.nn.functional.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float, window_size: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity per image (B,) (Wang, Bovik, Sheikh and Simoncelli 2004).

    Local statistics use a normalised Gaussian window (11 x 11, sigma 1.5 by default) over the
    'valid' region (no padding), population (not sample) variances, ``C1 = (0.01 L)^2`` and
    ``C2 = (0.03 L)^2`` with ``L = data_range``; the SSIM map is averaged over channels and positions.
    Images smaller than the window use the largest odd window that fits (same sigma). x and ref are
    (B, C, H, W) tensors of the same shape.
    """
    x, ref, data_range = _check_images(x, ref, data_range, "ssim")
    if (isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1
            or window_size % 2 == 0):
        raise ValueError(f"ssim window_size: expected an odd int >= 1, got {window_size!r}")
    sigma_ok = isinstance(sigma, (int, float)) and not isinstance(sigma, bool) and math.isfinite(sigma)
    if not (sigma_ok and sigma > 0):
        raise ValueError(f"ssim sigma: expected a finite number > 0, got {sigma!r}")
    size = min(window_size, x.shape[-2], x.shape[-1])
    if size % 2 == 0:
        size -= 1
    g = _gaussian_window(size, float(sigma), x.device)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_x, mu_y = _filter(x, g), _filter(ref, g)
    var_x = _filter(x * x, g) - mu_x * mu_x
    var_y = _filter(ref * ref, g) - mu_y * mu_y
    cov = _filter(x * ref, g) - mu_x * mu_y
    num = (2.0 * mu_x * mu_y + c1) * (2.0 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return (num / den).mean(dim=(1, 2, 3))
