"""Measurement noise models (separate from the operators, as in DPS and deepinv).

Each model is a ``torch.nn.Module`` called as ``noise(y, generator=None)``. With a ``torch.Generator`` the
draw is reproducible: the random numbers are drawn on the generator's device and then moved to ``y``'s, so a
CPU generator gives the same noise whatever device ``y`` is on. Measurements follow the image convention
(values in [-1, 1]) where that matters (Poisson).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import check_float, check_tensor


def _check_generator(generator: object) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"noise generator: expected a torch.Generator or None, got "
                        f"{type(generator).__name__}")
    return generator


class NoiseModel(nn.Module):
    """Base class: ``forward(y, generator=None)`` returns a noisy copy of the measurement ``y``."""

    name: str = ""

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract


class NoNoise(NoiseModel):
    """No noise ("none", DPS's "clean"): returns ``y`` unchanged."""

    name = "none"
    sigma = 0.0

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_tensor(y, "noise input")
        _check_generator(generator)
        return y


class GaussianNoise(NoiseModel):
    """Additive white Gaussian noise: y + sigma * N(0, I).

    :param sigma: standard deviation, >= 0 (DPS uses 0.05 on [-1, 1] images).
    """

    name = "gaussian"

    def __init__(self, sigma: float = 0.05) -> None:
        super().__init__()
        self.sigma = check_float(sigma, "gaussian noise sigma", minimum=0.0)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_tensor(y, "noise input")
        generator = _check_generator(generator)
        device = y.device if generator is None else generator.device
        z = torch.randn(y.shape, generator=generator, device=device, dtype=y.dtype)
        return y + self.sigma * z.to(y.device)


class PoissonNoise(NoiseModel):
    """Poisson (shot) noise as in DPS, for measurements in [-1, 1].

    y is mapped to [0, 1] and clamped, ``Poisson(y * 255 * rate) / (255 * rate)`` is drawn, and the result is
    mapped back to [-1, 1] and clamped.

    :param rate: photon-count scale, > 0 (larger = less noise).
    """

    name = "poisson"

    def __init__(self, rate: float = 1.0) -> None:
        super().__init__()
        self.rate = check_float(rate, "poisson noise rate", minimum=0.0, strict_minimum=True)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"

    def forward(self, y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        check_tensor(y, "noise input")
        generator = _check_generator(generator)
        scale = 255.0 * self.rate
        intensity = ((y + 1.0) / 2.0).clamp(0.0, 1.0) * scale
        if generator is not None:
            intensity = intensity.to(generator.device)
        counts = torch.poisson(intensity, generator=generator).to(y.device)
        return (counts / scale * 2.0 - 1.0).clamp(-1.0, 1.0)
