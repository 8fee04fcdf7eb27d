"""Base classes of the measurement operators.

Convention (as in the DPS/PSLD/ReSample reference code): images are float tensors of shape
(B, C, H, W) with values in [-1, 1]. Operators are ``torch.nn.Module``s whose kernels and masks are
registered buffers, so ``.to(device, dtype)`` and ``state_dict`` work; ``forward`` is A. Noise is not
part of an operator: see :mod:`samplers.operators.noise`.
"""

from __future__ import annotations

import torch
from torch import nn


class Operator(nn.Module):
    """A (possibly non-linear) measurement operator y = A(x)."""

    #: True for operators that are linear in x (they then implement :meth:`adjoint`).
    linear: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def measurement_shape(self, x_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of A(x) for an input of shape ``x_shape`` (computed without running A)."""
        raise NotImplementedError(f"{type(self).__name__} does not define measurement_shape")

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError with a clear message when ``x`` cannot be measured by this operator."""
        if x.dim() != 4:
            raise ValueError(f"{type(self).__name__}: expected an image batch (B, C, H, W), got shape "
                             f"{tuple(x.shape)}")


class LinearOperator(Operator):
    """A linear operator: ``adjoint`` is the true adjoint (<Ax, y> = <x, A^T y>)."""

    linear = True

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        """A cheap right-inverse A^+ with A(A^+ y) = y, where one exists."""
        raise NotImplementedError(f"{type(self).__name__} has no cheap pseudo-inverse")

    @property
    def has_pseudo_inverse(self) -> bool:
        return type(self).pseudo_inverse is not LinearOperator.pseudo_inverse
