"""SITCOM: step-wise triple-consistent diffusion sampling (Alkhouri et al. 2025),
sjames40/SITCOM @ 445738a, ``SITCOM_with_noise.py``.

Per step t (``optimize_input``):
1. v <- x_t; up to K times (Adam, lr 0.02): x0_hat = denoiser(v, t) and
   ``loss = ||A(D(x0_hat)) - y||^2``; stop when ``loss < (sigma_y + 0.001)^2 * m`` (m = numel of y);
2. re-noise: ``x_{t-1} = noise_scaling(sigma_{t-1}, fresh noise, x0_hat)``.
With EquiReg, the EquiReg library's extra phase runs after step 1: ``equi_phase`` minimises the
penalty alone over x0_hat for ``equi_steps`` Adam steps (lr = SITCOM's lr).

Sigma parameterisation: v is optimised on the VP state x / k (Adam's step is in the units of its
variable, so the reference's lr applies unchanged). The stopping rule is per sample.
**No selection by ground truth**: the reference script tracks the PSNR of every iterate against the
clean image and reports the best one; that oracle is not available to a user and is not done here.
Defaults (reference arguments): K = 30 inner steps, lr 0.02; N = 20 outer steps is the
reference's sampler step count (pass a 20-step schedule to match it).
"""

from __future__ import annotations

import torch

from .common import BatchedAdam, Strategy, Tensor, grad_enabled


class SITCOM(Strategy):
    name = "sitcom"
    options = {"inner_steps": 30, "lr": 0.02, "equi_steps": 30, "stop_margin": 0.001}
    option_docs = {
        "inner_steps": "K, Adam iterations of the input optimisation per step (reference 30)",
        "lr": "Adam learning rate on the VP state (reference 0.02)",
        "equi_steps": "Adam iterations of the EquiReg phase when a regularizer is given (reference 30)",
        "stop_margin": "stop when ||A x0 - y||^2 < (sigma_y + margin)^2 * m (reference 0.001)",
    }

    def check_options(self) -> None:
        self.require_int("inner_steps", "equi_steps", minimum=0)
        self.require_positive("lr")
        self.require_non_negative("stop_margin")

    def step(self, i: int, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
        ctx = self.ctx
        k = ctx.vp_scale(sigma)
        m = ctx.measurement[0].numel()
        threshold = (float(ctx.options["sigma_y"]) + self.opt["stop_margin"]) ** 2 * m
        u = (x / k).detach().float()
        adam = BatchedAdam(u, self.opt["lr"])
        active = torch.ones(u.shape[0], dtype=torch.bool, device=u.device)
        x0 = None
        for _ in range(self.opt["inner_steps"]):
            with grad_enabled():
                leaf = u.detach().clone().requires_grad_(True)
                x0 = ctx._denoise((leaf * k).to(x.dtype), sigma.detach().clone())
                loss = ctx.residual_sqnorm(ctx.decode(x0))
                (grad,) = torch.autograd.grad(loss.sum(), leaf)
            x0 = x0.detach()
            active = active & (loss.detach() >= threshold)
            if not active.any():
                break
            u = adam.step(u, grad, active)
            x0 = None  # u moved: the estimate must be recomputed
        if x0 is None:
            x0 = ctx.denoise((u * k).to(x.dtype), sigma)
        if ctx.equireg is not None:
            from ..equireg import equi_phase

            x0 = equi_phase(ctx.equireg, x0, i, ctx.total_steps, num_steps=self.opt["equi_steps"],
                            lr=self.opt["lr"])
        if float(sigma_next) == 0.0:
            return x0, x0
        return ctx.renoise(sigma_next, ctx.randn_like(x0), x0), x0
