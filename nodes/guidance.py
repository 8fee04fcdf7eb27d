"""Comfy-free math of the Posterior Guider: where a step goes and how to turn a DPS step into a
correction of the denoised estimate.

This module imports only torch (no ComfyUI, no relative imports), so CI can test it without ComfyUI.

Noise spaces (ComfyUI's ``model_sampling``): the sampler state is ``x = a(sigma) x0 + b(sigma) n`` with
``(a, b) = (1, sigma)`` for EPS / V-prediction models (variance exploding) and ``(1 - sigma, sigma)``
for CONST (rectified-flow) models. The variance-preserving (VP) DDPM state of the DPS paper is
``x_vp = x / k`` with ``k(sigma) = sqrt(a^2 + b^2)`` (see :mod:`samplers.solvers.common`).

From DPS to a denoised correction
---------------------------------
DPS (Chung et al. 2023) with step size zeta, written on our state (the core's convention)::

    x' = x'_uncond - zeta * k(sigma) * k(sigma') * g,        g = grad_x ||y - A(D(x0_hat(x)))||

A GUIDER can only change what the model returns, the denoised ``x0_hat``. ComfyUI's Euler step (the
same formula in the VE and in the flow space) is::

    x' = x + (sigma' - sigma) * (x - x0_hat) / sigma

so returning ``x0_hat + c`` moves the step's result by ``(sigma - sigma') / sigma * c``. Equating that
with the DPS term gives the correction::

    c = -zeta * k(sigma) * k(sigma') * sigma / (sigma - sigma') * g

With it, one Euler step of the guided model is exactly one DPS step (on top of the Euler/DDIM-eta-0
update instead of DPS's ancestral one). ``sigma'`` is the next sigma of the schedule (ComfyUI puts the
schedule into ``transformer_options["sample_sigmas"]``). Other samplers use the corrected x0 in their
own update: multistep methods (dpmpp_2m, ...) mix it with earlier x0s, ancestral ones step to a
smaller ``sigma_down``, second-order ones also evaluate between two schedule sigmas (the correction
then targets the end of the current schedule interval). They all move in the DPS direction with a
comparable size, but only Euler reproduces DPS exactly.
"""

from __future__ import annotations

import math

import torch

Tensor = torch.Tensor

__all__ = [
    "check_step_size",
    "dps_denoised_correction",
    "euler_step",
    "noise_coefficients",
    "schedule_position",
    "vp_scale",
]


def check_step_size(step_size: float, name: str = "step_size") -> float:
    """Return ``step_size`` as a float; raise ValueError naming the input unless it is finite and > 0."""
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)):
        raise TypeError(f"{name} must be a number > 0, got {step_size!r}")
    value = float(step_size)
    if not (value > 0.0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {step_size!r}")
    return value


def noise_coefficients(sigma: Tensor, flow: bool) -> tuple[Tensor, Tensor]:
    """(a, b) with ``x = a * x0 + b * noise`` at ``sigma`` (flow: rectified-flow space, else VE)."""
    if flow:
        return 1.0 - sigma, sigma
    return torch.ones_like(sigma), sigma


def vp_scale(sigma: Tensor, flow: bool) -> Tensor:
    """k(sigma) = sqrt(a^2 + b^2): the VP state is x / k."""
    a, b = noise_coefficients(sigma, flow)
    return torch.sqrt(a * a + b * b)


def schedule_position(
    sample_sigmas: Tensor | None, sigma: float, rtol: float = 1e-4
) -> tuple[int, int, float]:
    """Locate ``sigma`` in a decreasing sigma schedule: ``(step, total_steps, sigma_next)``.

    ``step`` is the index of the last schedule sigma >= ``sigma`` (so a second-order sampler's
    intermediate evaluation counts as part of the current step), ``sigma_next`` the first schedule
    sigma below it (0 when there is none). ``total_steps`` is ``len(sample_sigmas) - 1``.
    Without a schedule this returns ``(0, 1, 0.0)``.
    """
    if sample_sigmas is None or len(sample_sigmas) == 0:
        return 0, 1, 0.0
    values = [float(s) for s in sample_sigmas.detach().flatten().cpu()]
    total = max(1, len(values) - 1)
    tol = rtol * max(abs(sigma), 1e-12)
    step = 0
    for i, s in enumerate(values):
        if s >= sigma - tol:
            step = i
    step = min(step, total - 1)
    sigma_next = 0.0
    for s in values:
        if s < sigma - tol:
            sigma_next = s
            break
    return step, total, sigma_next


def dps_denoised_correction(
    grad: Tensor, sigma: Tensor, sigma_next: Tensor, step_size: float, flow: bool
) -> Tensor:
    """The correction c of the denoised estimate that makes an Euler step a DPS step (module docstring).

    ``grad`` (B, ...) is ``grad_x`` of the per-sample summed loss; ``sigma`` and ``sigma_next`` are
    (B,) tensors (or scalars) with ``sigma > sigma_next >= 0``. Returns a tensor like ``grad``.
    """
    zeta = check_step_size(step_size)
    sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1)
    sigma_next = torch.as_tensor(sigma_next, dtype=torch.float64).reshape(-1)
    if sigma.numel() == 1 and grad.shape[0] != 1:
        sigma = sigma.expand(grad.shape[0])
    if sigma_next.numel() == 1 and grad.shape[0] != 1:
        sigma_next = sigma_next.expand(grad.shape[0])
    if not bool((sigma > sigma_next).all()) or not bool((sigma_next >= 0).all()):
        raise ValueError(f"need sigma > sigma_next >= 0, got sigma={sigma.tolist()}, "
                         f"sigma_next={sigma_next.tolist()}")
    factor = zeta * vp_scale(sigma, flow) * vp_scale(sigma_next, flow) * sigma / (sigma - sigma_next)
    factor = factor.to(device=grad.device, dtype=grad.dtype).view(-1, *([1] * (grad.dim() - 1)))
    return -factor * grad


def euler_step(x: Tensor, denoised: Tensor, sigma: Tensor, sigma_next: Tensor) -> Tensor:
    """ComfyUI's Euler step ``x + (sigma' - sigma) (x - denoised) / sigma`` (VE and flow spaces alike)."""
    shape = (-1, *([1] * (x.dim() - 1)))
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(shape)
    sigma_next = torch.as_tensor(sigma_next, dtype=x.dtype, device=x.device).reshape(shape)
    return x + (sigma_next - sigma) * (x - denoised) / sigma
