"""Bicubic antialiased down-sampling, as the DPS reference defines super-resolution.

DPS (``util/resizer.py``, after A. Shocher's MATLAB-compatible ``imresize``) down-samples with a separable
cubic kernel (Keys, a = -0.5, support 4 pixels). When down-scaling by ``scale = 1/factor`` the kernel is
stretched by ``factor`` and its height scaled by ``scale`` (antialiasing), every output pixel's weights are
normalised to sum to one, and input indices outside the image are mirrored (``0 1 .. n-1 n-1 .. 0``, i.e.
half-sample symmetric reflection). The output has ``ceil(n * scale)`` pixels per dimension, centred on the
input. This is *not* ``F.interpolate(mode="bicubic", antialias=True)``: the boundary rule differs.

Because the resize is linear and separable, it is applied here as two small dense matrices (out x in, one
per dimension), built once per input size and cached; the adjoint is then the transposed matrices and an
exact right-inverse is given by their per-dimension pseudo-inverses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .base import LinearOperator, check_image, check_int, check_shape, check_size_pair

#: Down-sampling factors of the super-resolution operator.
SUPPORTED_FACTORS = (2, 4, 8)


def cubic(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (support [-2, 2])."""
    a = np.abs(t)
    a2, a3 = a * a, a * a * a
    return ((1.5 * a3 - 2.5 * a2 + 1.0) * (a <= 1)
            + (-0.5 * a3 + 2.5 * a2 - 4.0 * a + 2.0) * ((a > 1) & (a <= 2)))


def resize_matrix(in_length: int, scale: float, out_length: int | None = None,
                  antialiasing: bool = True) -> np.ndarray:
    """Dense (out_length, in_length) float64 matrix of the 1-D cubic resize by ``scale``.

    Follows the resizer of the DPS reference: output pixel centres are mapped into the input with
    ``u = (p - shift) / scale + (1 - 1/scale) / 2`` (1-based ``p``, ``shift`` centring an output whose
    length is not exactly ``in_length * scale``); the taps are ``ceil(width) + 2`` neighbouring input pixels
    (width 4, or ``4 / scale`` with antialiasing); their weights are normalised to sum to one and then
    out-of-range indices are mirrored back into the image (their weights add up).
    """
    in_length = check_int(in_length, "in_length", minimum=1)
    if out_length is None:
        out_length = math.ceil(in_length * scale)
    antialiasing = antialiasing and scale < 1
    if antialiasing:
        def kernel(t: np.ndarray) -> np.ndarray:
            return scale * cubic(scale * t)
        width = 4.0 / scale
    else:
        kernel, width = cubic, 4.0

    p = np.arange(1, out_length + 1, dtype=np.float64)
    shifted = p - (out_length - in_length * scale) / 2.0
    centre = shifted / scale + 0.5 * (1.0 - 1.0 / scale)  # 1-based input coordinate of each output pixel
    left = np.floor(centre - width / 2.0)
    taps = int(math.ceil(width)) + 2
    index = (left[:, None] + np.arange(taps)[None, :] - 1).astype(np.int64)  # 0-based input indices
    weights = kernel(centre[:, None] - index - 1.0)
    sums = weights.sum(axis=1, keepdims=True)
    sums[sums == 0] = 1.0
    weights = weights / sums

    # Mirror with period 2n: -1 -> 0, n -> n-1, as the reference's ``mirror`` array does.
    period = 2 * in_length
    index = np.mod(index, period)
    index = np.where(index < in_length, index, period - 1 - index)
    matrix = np.zeros((out_length, in_length), dtype=np.float64)
    rows = np.broadcast_to(np.arange(out_length)[:, None], index.shape)
    np.add.at(matrix, (rows, index), weights)
    return matrix


class SuperResolution(LinearOperator):
    """Bicubic antialiased down-sampling by ``factor`` (DPS super-resolution), on (B, C, H, W) in [-1, 1].

    Any image size works; the output is ``(ceil(H / factor), ceil(W / factor))``. The adjoint and the
    pseudo-inverse map back to the image size, which is taken (in this order) from the ``image_size``
    keyword of the call, the ``image_size`` constructor parameter, the size of the last input given to
    ``forward``, or ``factor`` times the measurement size.

    :param factor: down-sampling factor, one of 2, 4, 8.
    :param image_size: optional (H, W) of the images to be measured (needed for the adjoint only when it
        cannot be inferred, e.g. odd sizes before any forward call).
    """

    name = "super_resolution"

    def __init__(self, factor: int = 4, image_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        factor = check_int(factor, "super_resolution factor")
        if factor not in SUPPORTED_FACTORS:
            raise ValueError(f"super_resolution factor: expected one of {SUPPORTED_FACTORS}, got {factor}")
        self.factor = factor
        self.image_size = None if image_size is None else check_size_pair(image_size, "image_size")
        self._last_size: tuple[int, int] | None = None
        # Derived caches (not buffers: they are rebuilt from `factor` for each size/device/dtype).
        self._matrices: dict[tuple, torch.Tensor] = {}

    def extra_repr(self) -> str:
        return f"factor={self.factor}, image_size={self.image_size}"

    # -- weights ------------------------------------------------------------------------------------------

    def _matrix(self, n: int, device: torch.device, dtype: torch.dtype, kind: str = "A") -> torch.Tensor:
        """The (out, n) resize matrix (kind "A") or its (n, out) pseudo-inverse (kind "pinv")."""
        key = (n, kind, device, dtype)
        cached = self._matrices.get(key)
        if cached is None:
            base = resize_matrix(n, 1.0 / self.factor)
            if kind == "pinv":
                base = np.linalg.pinv(base)
            cached = torch.as_tensor(base, dtype=torch.float64).to(device=device, dtype=dtype)
            self._matrices[key] = cached
        return cached

    def weight_matrices(self, image_size: tuple[int, int], device: torch.device | str = "cpu",
                        dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
        """The row (h x H) and column (w x W) resize matrices for images of size ``image_size``."""
        h, w = check_size_pair(image_size, "image_size")
        device = torch.device(device)
        return self._matrix(h, device, dtype), self._matrix(w, device, dtype)

    # -- operator -----------------------------------------------------------------------------------------

    def check_input(self, x: torch.Tensor) -> None:
        check_image(x, "super_resolution input")

    def measurement_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        b, c, h, w = check_shape(x_shape, "super_resolution x_shape")
        return (b, c, -(-h // self.factor), -(-w // self.factor))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        h, w = x.shape[-2:]
        self._last_size = (h, w)
        mh = self._matrix(h, x.device, x.dtype)
        mw = self._matrix(w, x.device, x.dtype)
        return mh @ x @ mw.T

    def _target_size(self, y: torch.Tensor, image_size: tuple[int, int] | None) -> tuple[int, int]:
        check_image(y, "super_resolution measurement")
        if image_size is not None:
            size = check_size_pair(image_size, "image_size")
        elif self.image_size is not None:
            size = self.image_size
        elif self._last_size is not None:
            size = self._last_size
        else:
            size = (y.shape[-2] * self.factor, y.shape[-1] * self.factor)
        expected = (-(-size[0] // self.factor), -(-size[1] // self.factor))
        if tuple(y.shape[-2:]) != expected:
            raise ValueError(f"super_resolution: a measurement of size {tuple(y.shape[-2:])} does not come "
                             f"from images of size {size} (expected {expected}); pass image_size=(H, W)")
        return size

    def adjoint(self, y: torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """True adjoint A^T y (transposed resize matrices), of the image size (see class docstring)."""
        h, w = self._target_size(y, image_size)
        mh = self._matrix(h, y.device, y.dtype)
        mw = self._matrix(w, y.device, y.dtype)
        return mh.T @ y @ mw

    def pseudo_inverse(self, y: torch.Tensor, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Exact right-inverse: per-dimension Moore-Penrose pseudo-inverses, so A(A^+ y) = y."""
        h, w = self._target_size(y, image_size)
        ph = self._matrix(h, y.device, y.dtype, "pinv")
        pw = self._matrix(w, y.device, y.dtype, "pinv")
        return ph @ y @ pw.T

    def dps_backprojection(self, y: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """DPS's ``transpose``: nearest-neighbour up-sampling by ``factor``. NOT the adjoint of ``forward``.

        Kept for the DPS ``mcg``/projection variants that use it. With ``size`` the nearest up-sampling
        targets that (H, W) instead (useful when H or W is not a multiple of ``factor``).
        """
        check_image(y, "super_resolution measurement")
        if size is not None:
            return F.interpolate(y, size=check_size_pair(size, "size"), mode="nearest")
        return F.interpolate(y, scale_factor=self.factor, mode="nearest")
