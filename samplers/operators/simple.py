"""Small operators: HDR (clipping), identity (denoising) and a dense matrix (vectors, e.g. the GMM tests)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .base import LinearOperator, Operator, check_float, check_shape, check_tensor


class HDR(Operator):
    """High-dynamic-range reconstruction (DAPS): y = clip(scale * x, -1, 1), images in [-1, 1]. Non-linear.

    :param scale: exposure factor (default 2.0, as DAPS).
    """

    name = "hdr"

    def __init__(self, scale: float = 2.0) -> None:
        super().__init__()
        self.scale = check_float(scale, "hdr scale", minimum=0.0, strict_minimum=True)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"

    def measurement_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        return check_shape(x_shape, "hdr x_shape")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return torch.clamp(self.scale * x, -1.0, 1.0)


class Identity(LinearOperator):
    """Identity (denoising): y = x. Accepts any batch (B, ...), images (B, C, H, W) in [-1, 1] included."""

    name = "identity"

    def check_input(self, x: torch.Tensor) -> None:
        check_tensor(x, "identity input", min_dim=2)

    def measurement_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        return check_shape(x_shape, "identity x_shape", ndim=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return x

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self.check_input(y)
        return y

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        self.check_input(y)
        return y


class Matrix(LinearOperator):
    """Dense linear operator: x of shape (B, *) is flattened to (B, d) and mapped to (B, m) by ``matrix``.

    ``adjoint`` and ``pseudo_inverse`` return (B, *input_shape): ``input_shape`` as given, else the trailing
    shape of the last input given to ``forward``, else (d,). The pseudo-inverse uses a Moore-Penrose
    pseudo-inverse precomputed (in float64) at construction, so A(A^+ y) = y when ``matrix`` has full row
    rank. The buffers keep the dtype of ``matrix`` and are cast to the input's dtype at each call.

    :param matrix: (m, d) real tensor.
    :param input_shape: optional trailing shape of the inputs (product d), e.g. (C, H, W).
    """

    name = "matrix"

    def __init__(self, matrix: torch.Tensor, input_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        matrix = check_tensor(matrix, "matrix", min_dim=2)
        if matrix.dim() != 2 or min(matrix.shape) == 0:
            raise ValueError(f"matrix: expected a non-empty 2-D tensor (m, d), got shape "
                             f"{tuple(matrix.shape)}")
        if not torch.isfinite(matrix).all():
            raise ValueError("matrix: expected finite values, got NaN or inf")
        matrix = matrix.detach().clone()
        self.register_buffer("matrix", matrix)
        self.register_buffer("pinv", torch.linalg.pinv(matrix.double()).to(matrix.dtype))
        self.out_features, self.in_features = matrix.shape
        if input_shape is not None:
            input_shape = check_shape(input_shape, "matrix input_shape", ndim=None)
            if math.prod(input_shape) != self.in_features:
                raise ValueError(f"matrix input_shape {input_shape} has {math.prod(input_shape)} elements, "
                                 f"but the matrix has {self.in_features} columns")
        self.input_shape = input_shape
        self._last_shape: tuple[int, ...] | None = None

    def extra_repr(self) -> str:
        return (f"out_features={self.out_features}, in_features={self.in_features}, "
                f"input_shape={self.input_shape}")

    def check_input(self, x: torch.Tensor) -> None:
        check_tensor(x, "matrix input", min_dim=2)
        if math.prod(x.shape[1:]) != self.in_features:
            raise ValueError(f"matrix: input of shape {tuple(x.shape)} has {math.prod(x.shape[1:])} values "
                             f"per sample, expected {self.in_features} (the matrix's number of columns)")

    def _check_measurement(self, y: torch.Tensor) -> None:
        check_tensor(y, "matrix measurement", min_dim=2)
        if y.dim() != 2 or y.shape[1] != self.out_features:
            raise ValueError(f"matrix: expected a measurement of shape (B, {self.out_features}), got "
                             f"{tuple(y.shape)}")

    def measurement_shape(self, x_shape: Sequence[int]) -> tuple[int, ...]:
        shape = check_shape(x_shape, "matrix x_shape", ndim=None)
        if len(shape) < 2 or math.prod(shape[1:]) != self.in_features:
            raise ValueError(f"matrix x_shape: expected (B, *) with {self.in_features} values per sample, "
                             f"got {shape}")
        return (shape[0], self.out_features)

    def _output_shape(self) -> tuple[int, ...]:
        if self.input_shape is not None:
            return self.input_shape
        return self._last_shape if self._last_shape is not None else (self.in_features,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        self._last_shape = tuple(x.shape[1:])
        return x.reshape(x.shape[0], -1) @ self.matrix.to(device=x.device, dtype=x.dtype).T

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        self._check_measurement(y)
        x = y @ self.matrix.to(device=y.device, dtype=y.dtype)
        return x.reshape(y.shape[0], *self._output_shape())

    def pseudo_inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check_measurement(y)
        x = y @ self.pinv.to(device=y.device, dtype=y.dtype).T
        return x.reshape(y.shape[0], *self._output_shape())
