"""Measurement operators and noise models (pure PyTorch; images (B, C, H, W) in [-1, 1]).

Build them by name with :func:`make` and :func:`make_noise`::

    op = make("super_resolution", factor=4)
    y = make_noise("gaussian", sigma=0.05)(op(x), generator=torch.Generator().manual_seed(0))

Operators: ``super_resolution``, ``gaussian_blur``, ``motion_blur``, ``blur``, ``inpainting``,
``phase_retrieval``, ``hdr``, ``identity``, ``matrix``. Noise: ``gaussian``, ``poisson``, ``none``.
"""

from __future__ import annotations

import inspect
from typing import Any

from .base import LinearOperator, Operator
from .blur import Blur, GaussianBlur, gaussian_kernel
from .inpainting import Inpainting, box_mask, random_mask
from .motion import MotionBlur, motion_kernel
from .noise import GaussianNoise, NoiseModel, NoNoise, PoissonNoise
from .phase_retrieval import PhaseRetrieval, fft2c
from .resize import SuperResolution, resize_matrix
from .simple import HDR, Identity, Matrix

#: Operator name -> class.
OPERATORS: dict[str, type[Operator]] = {
    "super_resolution": SuperResolution,
    "gaussian_blur": GaussianBlur,
    "motion_blur": MotionBlur,
    "blur": Blur,
    "inpainting": Inpainting,
    "phase_retrieval": PhaseRetrieval,
    "hdr": HDR,
    "identity": Identity,
    "matrix": Matrix,
}

#: Noise name -> class.
NOISES: dict[str, type[NoiseModel]] = {
    "gaussian": GaussianNoise,
    "poisson": PoissonNoise,
    "none": NoNoise,
}


def parameters(cls: type) -> dict[str, Any]:
    """Constructor parameters of an operator or noise class: name -> default (``inspect.Parameter.empty``
    when required)."""
    signature = inspect.signature(cls.__init__)
    return {name: p.default for name, p in signature.parameters.items()
            if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _build(registry: dict[str, type], kind: str, name: str, params: dict[str, Any]) -> Any:
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; valid names: {', '.join(registry)}")
    cls = registry[name]
    valid = parameters(cls)
    unknown = sorted(set(params) - set(valid))
    if unknown:
        listed = ", ".join(valid) if valid else "(none)"
        raise TypeError(f"{kind} {name!r} got unknown parameter(s) {', '.join(unknown)}; valid parameters: "
                        f"{listed}")
    missing = [p for p, default in valid.items() if default is inspect.Parameter.empty and p not in params]
    if missing:
        raise TypeError(f"{kind} {name!r} needs parameter(s) {', '.join(missing)}; valid parameters: "
                        f"{', '.join(valid)}")
    return cls(**params)


def make(name: str, **params: Any) -> Operator:
    """Build the operator ``name`` (see :data:`OPERATORS`) with its constructor parameters."""
    return _build(OPERATORS, "operator", name, params)


def make_noise(name: str, **params: Any) -> NoiseModel:
    """Build the noise model ``name`` ("gaussian", "poisson" or "none") with its parameters."""
    return _build(NOISES, "noise model", name, params)


__all__ = [
    "HDR", "NOISES", "OPERATORS", "Blur", "GaussianBlur", "GaussianNoise", "Identity", "Inpainting",
    "LinearOperator", "Matrix", "MotionBlur", "NoNoise", "NoiseModel", "Operator", "PhaseRetrieval",
    "PoissonNoise", "SuperResolution", "box_mask", "fft2c", "gaussian_kernel", "make", "make_noise",
    "motion_kernel", "parameters", "random_mask", "resize_matrix",
]
