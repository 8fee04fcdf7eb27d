"""Convolution blurs as in DPS: reflection padding by k//2, then a depthwise (per-channel) correlation.

``Blur`` takes any user kernel; ``GaussianBlur`` builds the DPS Gaussian kernel
(``scipy.ndimage.gaussian_filter`` of a centred delta, re-implemented here in torch so scipy is not needed at
run time); ``MotionBlur`` lives in :mod:`samplers.operators.motion`. Unlike DPS, whose ``transpose`` is the
identity, ``adjoint`` is the true adjoint of "reflect-pad then correlate": a transposed convolution followed
by folding the padded border back onto the pixels it was reflected from.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import (
    LinearOperator,
    check_float,
    check_image,
    check_odd_kernel_size,
    check_shape,
    check_tensor,
)


def _reflect_index(n_padded: int, pad: int, n: int, device: torch.device) -> torch.Tensor:
    """Source index, in a length-``n`` signal, of each position of its reflection padding by ``pad``.

    Matches ``F.pad(mode="reflect")`` (edge not repeated: ``2 1 | 0 1 2 .. | n-2 n-3``), which requires
    ``pad < n``.
    """
    i = torch.arange(n_padded, device=device) - pad
    i = i.abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def gaussian_kernel(kernel_size: int = 61, sigma: float = 3.0, truncate: float = 4.0,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The (k, k) kernel ``scipy.ndimage.gaussian_filter(delta, sigma, truncate=truncate)`` of DPS.

    ``delta`` is a k x k array with a one at its centre. scipy filters each axis with the normalised
    sampled Gaussian of radius ``int(truncate * sigma + 0.5)`` and mode "reflect" (half-sample symmetric,
    period 2k), so a kernel smaller than the Gaussian's support gets the reflected tails folded back in.
    The result is separable: the outer product of the 1-D filtered delta with itself.
    """
    k = check_odd_kernel_size(kernel_size)
    sigma = check_float(sigma, "gaussian_blur sigma", minimum=0.0, strict_minimum=True)
    truncate = check_float(truncate, "truncate", minimum=0.0)
    radius = int(truncate * sigma + 0.5)
    taps = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (taps / sigma) ** 2)
    g = g / g.sum()
    # Output sample i correlates input samples i + t; only those that reflect onto the centre are non-zero.
    m = torch.arange(k)[:, None] + torch.arange(-radius, radius + 1)[None, :]
    m = torch.remainder(m, 2 * k)
    m = torch.where(m < k, m, 2 * k - 1 - m)
    profile = (g[None, :] * (m == k // 2)).sum(dim=1)
    return torch.outer(profile, profile).to(dtype)


class Blur(LinearOperator):
    """Blur with a user kernel: ``ReflectionPad2d(k//2)`` + depthwise correlation (DPS ``Blurkernel``).

    The kernel is used as given (it is not normalised); it is correlated, as ``torch.nn.Conv2d`` does, with
    every channel of (B, C, H, W) images in [-1, 1]. Reflection padding needs ``k//2 < H`` and ``< W``.

    :param kernel: 2-D tensor (kh, kw) with odd sizes and finite values.
    """

    name = "blur"

    def __init__(self, kernel: torch.Tensor) -> None:
        super().__init__()
        kernel = check_tensor(kernel, "blur kernel")
        if kernel.dim() != 2:
            raise ValueError(f"blur kernel: expected a 2-D tensor (kh, kw), got shape {tuple(kernel.shape)}")
        for size in kernel.shape:
            check_odd_kernel_size(size, f"blur kernel size {tuple(kernel.shape)}")
        if not torch.isfinite(kernel).all():
            raise ValueError("blur kernel: expected finite values, got NaN or inf")
        self.register_buffer("kernel", kernel.detach().clone())

    def extra_repr(self) -> str:
        return f"kernel_size={tuple(self.kernel.shape)}"

    @property
    def padding(self) -> tuple[int, int]:
        """Reflection padding (rows, columns) on each side."""
        return self.kernel.shape[0] // 2, self.kernel.shape[1] // 2

    def check_input(self, x: torch.Tensor) -> None:
        check_image(x, f"{self.name} input")
        ph, pw = self.padding
        h, w = x.shape[-2:]
        if ph >= h or pw >= w:
            raise ValueError(f"{self.name}: reflection padding by the kernel half-size {(ph, pw)} needs an "
                             f"image larger than that in each dimension, got {(h, w)}; use a smaller "
                             f"kernel_size")

    def measurement_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        return check_shape(x_shape, f"{self.name} x_shape")

    def _weight(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel.to(device=x.device, dtype=x.dtype)
        return k.expand(x.shape[1], 1, *k.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        ph, pw = self.padding
        padded = F.pad(x, (pw, pw, ph, ph), mode="reflect")
        return F.conv2d(padded, self._weight(x), groups=x.shape[1])

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        """True adjoint: transposed depthwise convolution, then the reflected border folded back."""
        self.check_input(y)
        ph, pw = self.padding
        h, w = y.shape[-2:]
        z = F.conv_transpose2d(y, self._weight(y), groups=y.shape[1])  # (B, C, h + 2ph, w + 2pw)
        rows = _reflect_index(h + 2 * ph, ph, h, y.device)
        cols = _reflect_index(w + 2 * pw, pw, w, y.device)
        z = z.new_zeros(*z.shape[:2], h, z.shape[3]).index_add(2, rows, z)
        return z.new_zeros(*z.shape[:3], w).index_add(3, cols, z)


class GaussianBlur(Blur):
    """DPS Gaussian deblurring operator: blur by :func:`gaussian_kernel` (``kernel_size``, ``sigma``).

    :param kernel_size: odd kernel size (default 61, as DPS).
    :param sigma: Gaussian standard deviation in pixels (DPS's ``intensity``, default 3.0).
    """

    name = "gaussian_blur"

    def __init__(self, kernel_size: int = 61, sigma: float = 3.0) -> None:
        kernel_size = check_odd_kernel_size(kernel_size)
        super().__init__(gaussian_kernel(kernel_size, sigma, dtype=torch.float32))
        self.kernel_size = kernel_size
        self.sigma = float(sigma)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}"
