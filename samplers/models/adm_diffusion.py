"""An ADM epsilon-prediction UNet as a k-diffusion denoiser D(x, sigma) ~ E[x0 | x].

Convention (k-diffusion "VE" form): images in [-1, 1], noisy input ``x = x0 + sigma * eps``. The DDPM
``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` is the same thing scaled by ``sqrt(abar_t)``, with
``sigma_t = sqrt((1 - abar_t) / abar_t)``; so the network gets ``x / sqrt(1 + sigma^2)`` and the
(fractional) timestep whose log-sigma matches, and the denoised image is ``x - sigma * eps``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .adm import ADMUNet

__all__ = ["ADMDenoiser", "adm_alphas_cumprod", "adm_betas", "adm_sigmas"]


def adm_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """guided-diffusion's "linear" beta schedule in float64 (the end points scale with 1000/num_steps)."""
    if not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an int >= 2, got {num_steps!r}")
    if not 0.0 < beta_start < beta_end < 1.0:
        raise ValueError(f"need 0 < beta_start < beta_end < 1, got {beta_start!r}, {beta_end!r}")
    scale = 1000.0 / num_steps
    return torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64)


def adm_alphas_cumprod(num_steps: int = 1000, beta_start: float = 1e-4,
                       beta_end: float = 0.02) -> torch.Tensor:
    """abar_t = prod_{s<=t} (1 - beta_s), float64, t = 0 .. num_steps-1."""
    return torch.cumprod(1.0 - adm_betas(num_steps, beta_start, beta_end), dim=0)


def adm_sigmas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The discrete noise levels sigma_t = sqrt((1 - abar_t) / abar_t), increasing with t."""
    abar = adm_alphas_cumprod(num_steps, beta_start, beta_end)
    return ((1.0 - abar) / abar).sqrt().to(dtype)


class ADMDenoiser(nn.Module):
    """Wrap an epsilon-prediction :class:`ADMUNet` as ``denoiser(x, sigma, y=None) -> x0_hat``.

    ``x`` is (B, C, H, W), ``sigma`` a scalar or (B,) tensor of noise levels. With a learned-range
    variance model (out_channels = 2 x in_channels) only the epsilon half of the output is used. The
    schedule buffers stay float32 even if the module is cast to half precision, and the result has the
    dtype of ``x`` (so a float32 loss can be formed around an fp16/bf16 network). Differentiable in x.
    """

    def __init__(self, unet: ADMUNet, num_steps: int = 1000, beta_start: float = 1e-4,
                 beta_end: float = 0.02) -> None:
        super().__init__()
        if not isinstance(unet, ADMUNet):
            raise TypeError(f"ADMDenoiser: unet must be an ADMUNet, got {type(unet).__name__}")
        cfg = unet.config
        if cfg.out_channels not in (cfg.in_channels, 2 * cfg.in_channels):
            raise ValueError(f"ADMDenoiser: expected an epsilon model with out_channels = in_channels or "
                             f"2 x in_channels (learned variance), got {cfg.in_channels} -> "
                             f"{cfg.out_channels}")
        self.unet = unet
        sigmas = adm_sigmas(num_steps, beta_start, beta_end, dtype=torch.float64)
        self.register_buffer("sigmas", sigmas.float(), persistent=False)
        self.register_buffer("log_sigmas", sigmas.log().float(), persistent=False)

    def _apply(self, fn: Any, recurse: bool = True) -> ADMDenoiser:
        super()._apply(fn, recurse)
        # Half-precision log-sigmas would map sigma to the wrong timestep; keep the schedule in float32.
        self.sigmas = self.sigmas.float()
        self.log_sigmas = self.log_sigmas.float()
        return self

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep: linear interpolation in log-sigma between the two nearest discrete levels.

        Clamped to [0, num_steps - 1] outside the table (k-diffusion's DiscreteSchedule.sigma_to_t).
        """
        log_table = self.log_sigmas
        log_sigma = torch.as_tensor(sigma, device=log_table.device).float().log()
        flat = log_sigma.reshape(-1)
        n = log_table.shape[0]
        low = (torch.searchsorted(log_table, flat, right=True) - 1).clamp(0, n - 2)
        lo, hi = log_table[low], log_table[low + 1]
        w = ((flat - lo) / (hi - lo)).clamp(0.0, 1.0)
        return (low.float() + w).reshape(log_sigma.shape)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`sigma_to_t` on [0, num_steps - 1]: log-linear interpolation of the table."""
        t = torch.as_tensor(t, device=self.log_sigmas.device).float().clamp(0, self.log_sigmas.shape[0] - 1)
        low = t.floor().long().clamp(max=self.log_sigmas.shape[0] - 2)
        w = t - low.float()
        log_sigma = (1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1]
        return log_sigma.exp()

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **kwargs: Any) -> torch.Tensor:
        """Denoised estimate of x0 (B, C, H, W) in [-1, 1] units; ``kwargs`` may only hold ``y``."""
        unknown = sorted(set(kwargs) - {"y"})
        if unknown:
            raise TypeError(f"ADMDenoiser: unknown keyword argument(s) {unknown}; valid: ['y']")
        cfg = self.unet.config
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != cfg.in_channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"ADMDenoiser: x must be a (B, {cfg.in_channels}, H, W) tensor, got {got}")
        batch = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32)
        if sigma.numel() == 1:
            sigma = sigma.reshape(1).expand(batch)
        elif sigma.shape != (batch,):
            raise ValueError(f"ADMDenoiser: sigma must be a scalar or of shape ({batch},), "
                             f"got {tuple(sigma.shape)}")
        t = self.sigma_to_t(sigma.detach().to(self.log_sigmas.device)).to(x.device)
        s = sigma.to(x.dtype).view(batch, 1, 1, 1)
        out = self.unet(x / torch.sqrt(1 + s * s), t, y=kwargs.get("y"))
        eps = out[:, : cfg.in_channels]
        return x - s * eps
