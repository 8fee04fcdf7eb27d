"""Base classes of the measurement operators, and the argument checks they share.

Convention (as in the DPS/PSLD/ReSample reference code): images are float tensors of shape
(B, C, H, W) with values in [-1, 1]. Operators are ``torch.nn.Module``s whose kernels and masks are
registered buffers, so ``.to(device)`` and ``state_dict`` work; ``forward`` is A. Buffers are cast to the
input's device and dtype at each call, so a float64 input gives a float64 output without converting the
module first. Noise is not part of an operator: see :mod:`samplers.operators.noise`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class Operator(nn.Module):
    """A (possibly non-linear) measurement operator y = A(x)."""

    #: True for operators that are linear in x (they then implement :meth:`adjoint`).
    linear: bool = False
    #: Registry name (see :func:`samplers.operators.make`).
    name: str = ""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def measurement_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of A(x) for an input of shape ``x_shape`` (computed without running A)."""
        raise NotImplementedError(f"{type(self).__name__} does not define measurement_shape")

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError/TypeError with a clear message when ``x`` cannot be measured by this operator."""
        check_image(x, f"{type(self).__name__} input")


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


# ---------------------------------------------------------------------------------------------------------
# Shared argument checks. They raise TypeError for a wrong type and ValueError for a wrong value, and always
# name the argument and what was expected.


def check_tensor(x: object, what: str, min_dim: int = 1) -> torch.Tensor:
    """Check that ``x`` is a real floating-point tensor with at least ``min_dim`` dimensions."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{what}: expected a real floating-point tensor, got dtype {x.dtype}")
    if x.dim() < min_dim:
        raise ValueError(f"{what}: expected at least {min_dim} dimensions, got shape {tuple(x.shape)}")
    return x


def check_image(x: object, what: str) -> torch.Tensor:
    """Check that ``x`` is an image batch: a real floating tensor of shape (B, C, H, W)."""
    x = check_tensor(x, what)
    if x.dim() != 4:
        raise ValueError(f"{what}: expected an image batch (B, C, H, W), got shape {tuple(x.shape)}")
    if min(x.shape) == 0:
        raise ValueError(f"{what}: expected a non-empty image batch, got shape {tuple(x.shape)}")
    return x


def check_shape(x_shape: Sequence[int], what: str, ndim: int | None = 4) -> tuple[int, ...]:
    """Normalise a shape argument to a tuple of positive ints (of length ``ndim`` when given)."""
    try:
        shape = tuple(int(s) for s in x_shape)
    except TypeError as err:
        raise TypeError(f"{what}: expected a shape (sequence of ints), got {x_shape!r}") from err
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"{what}: expected a shape of length {ndim} (B, C, H, W), got {shape}")
    if any(s <= 0 for s in shape):
        raise ValueError(f"{what}: expected positive sizes, got {shape}")
    return shape


def check_int(value: object, what: str, minimum: int | None = None) -> int:
    """Check that ``value`` is an int (not a bool), optionally ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what}: expected an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{what}: expected an int >= {minimum}, got {value}")
    return value


def check_float(value: object, what: str, minimum: float | None = None, maximum: float | None = None,
                strict_minimum: bool = False) -> float:
    """Check that ``value`` is a finite real number within the given bounds; return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what}: expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what}: expected a finite number, got {value}")
    if minimum is not None and (value < minimum or (strict_minimum and value == minimum)):
        bound = ">" if strict_minimum else ">="
        raise ValueError(f"{what}: expected a number {bound} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{what}: expected a number <= {maximum}, got {value}")
    return value


def check_odd_kernel_size(value: object, what: str = "kernel_size") -> int:
    """A kernel size must be a positive odd int, so that the kernel has a centre pixel."""
    size = check_int(value, what)
    if size <= 0 or size % 2 == 0:
        raise ValueError(f"{what}: expected a positive odd int (e.g. 61), got {size}")
    return size


def check_size_pair(value: object, what: str) -> tuple[int, int]:
    """Normalise an ``(H, W)`` pair (or a single int for a square) of positive ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value, value)
    if isinstance(value, torch.Size):
        value = tuple(value)
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{what}: expected an (H, W) pair of ints, got {value!r}")
    h = check_int(value[0], f"{what}[0]", minimum=1)
    w = check_int(value[1], f"{what}[1]", minimum=1)
    return h, w
