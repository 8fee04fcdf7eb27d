"""Fourier phase retrieval as in DPS: y = |F(pad(x))| with the centred orthonormal 2-D FFT.

The image is zero-padded by ``int(oversample / 8 * H)`` rows at the top and at the bottom and
``int(oversample / 8 * W)`` columns on the left and on the right (64 each at 256 with the default
``oversample = 2``, giving a 384 x 384 measurement), then ``fftshift(fft2(ifftshift(.), norm="ortho"))``
over the last two dimensions, and the magnitude is kept. As in DPS it acts directly on x in [-1, 1]
(SITCOM and DAPS first map x to [0, 1]; do that outside the operator if wanted). The operator is
non-linear: there is no adjoint; DPS-type solvers differentiate through it with autograd.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .base import Operator, check_float, check_image, check_shape


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2-D FFT over the last two dimensions (unitary: it preserves the L2 norm)."""
    x = torch.fft.ifftshift(x, dim=(-2, -1))
    x = torch.fft.fft2(x, norm="ortho")
    return torch.fft.fftshift(x, dim=(-2, -1))


class PhaseRetrieval(Operator):
    """Fourier magnitude of the zero-padded image (DPS ``phase_retrieval``), (B, C, H, W) in [-1, 1].

    :param oversample: padding ratio; ``int(oversample / 8 * n)`` zeros on each side of each dimension of
        size n (default 2.0, as DPS).
    """

    name = "phase_retrieval"

    def __init__(self, oversample: float = 2.0) -> None:
        super().__init__()
        self.oversample = check_float(oversample, "phase_retrieval oversample", minimum=0.0)

    def extra_repr(self) -> str:
        return f"oversample={self.oversample}"

    def padding(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Zeros added on each side: (rows at top and bottom, columns at left and right)."""
        h, w = image_size
        return int(self.oversample / 8.0 * h), int(self.oversample / 8.0 * w)

    def check_input(self, x: torch.Tensor) -> None:
        check_image(x, "phase_retrieval input")

    def measurement_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        b, c, h, w = check_shape(x_shape, "phase_retrieval x_shape")
        ph, pw = self.padding((h, w))
        return (b, c, h + 2 * ph, w + 2 * pw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        ph, pw = self.padding(tuple(x.shape[-2:]))
        padded = F.pad(x, (pw, pw, ph, ph))
        return fft2c(padded).abs()
