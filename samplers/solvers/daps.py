"""Decoupled Annealing Posterior Sampling (Zhang et al. 2025), zhangbingliang2019/DAPS @ 098df6b.

Per annealing level sigma_t (``sampler.py``, ``cores/mcmc.py``, prior solver "gaussian"):
1. x0_hat: probability-flow ODE from x_t at sigma_t down to sigma_min = 0.01 in ``ode_steps`` (5)
   Euler steps on an EDM rho = 7 grid (no gradients through the model);
2. Langevin on x0 for ``langevin_steps`` iterations:
   ``x <- x + lr_t * score + sqrt(2 lr_t) * n`` with
   ``score = -grad ||A(D(x)) - y||^2 / tau^2 + (x0_hat - x) / r_t^2`` (the reference's data term,
   literally; r_t is sigma_t in the VE units of x0), lr_t decaying linearly from lr to
   lr * lr_min_ratio over the annealing levels; with EquiReg the potential gains ``alpha * P(x)``:
   ``score -= grad alpha * P(x)``;
3. ``x_{t-1} = noise_scaling(sigma_{t-1}, fresh noise, x0)``.
Defaults: 100 Langevin steps, lr 1e-4, tau 0.01, lr_min_ratio 0.01, 5 ODE steps (the reference's
pixel configs use lr 1e-4 for SR, Gaussian deblurring and random inpainting, 5e-5 for motion
deblurring, box inpainting and phase retrieval, 2e-5 for HDR). The data step multiplies the top
eigenmode of A^T A (eigenvalue lambda) by 1 - 2 lr lambda / tau^2, so lr above tau^2 / lambda can
make the chain diverge (the solver then stops with an error naming lr and tau). The reference
anneals over 200 EDM levels from 100 to 0.1: pass such a schedule to match.
"""

from __future__ import annotations

import math

import torch

from .common import Strategy, Tensor, grad_enabled


class DAPS(Strategy):
    name = "daps"
    options = {"langevin_steps": 100, "lr": 1e-4, "tau": 0.01, "lr_min_ratio": 0.01, "ode_steps": 5,
               "sigma_min": 0.01}
    option_docs = {
        "langevin_steps": "Langevin iterations per annealing level (reference 100)",
        "lr": ("initial Langevin step size (reference 1e-4; 5e-5 motion deblurring, box inpainting, phase "
               "retrieval; 2e-5 HDR); above tau^2 / ||A||^2 the chain can diverge"),
        "tau": "data-term scale: the score uses -grad ||A x - y||^2 / tau^2 (reference 0.01)",
        "lr_min_ratio": "final step size as a fraction of lr (reference 0.01)",
        "ode_steps": "Euler steps of the probability-flow ODE giving x0_hat (reference 5)",
        "sigma_min": "noise level where the ODE stops (reference 0.01)",
    }

    def check_options(self) -> None:
        self.require_int("langevin_steps", "ode_steps")
        self.require_positive("lr", "tau", "sigma_min")
        self.require_non_negative("lr_min_ratio")
        # A pixel model with a linear operator has the closed-form data gradient
        # grad ||A v - y||^2 = 2 A^T (A v - y): no autograd graph in the Langevin loop, whose 100
        # iterations per step would otherwise cost more in autograd bookkeeping than in arithmetic.
        self.analytic = self.opt["decode"] is None and bool(getattr(self.ctx.operator, "linear", False))

    def data_gradient(self, v: Tensor) -> Tensor | None:
        """grad_v ||A v - y||^2 / tau^2 in closed form (float32), or None if A^T v does not fit v."""
        _, grad = self.ctx.normal_residual(v)
        if grad.shape != v.shape:  # e.g. an odd-size image whose measurement size is ambiguous
            self.analytic = False
            return None
        return grad.float() * (2.0 / self.opt["tau"] ** 2)

    def ode_x0(self, x: Tensor, sigma: Tensor) -> Tensor:
        """x0_hat from the probability-flow ODE (deterministic DDIM = Euler steps) down to sigma_min."""
        ctx = self.ctx
        s_min = min(self.opt["sigma_min"], float(sigma))
        n, rho = self.opt["ode_steps"], 7.0
        ramp = torch.linspace(0, 1, n + 1, dtype=torch.float64)
        hi, lo = float(sigma) ** (1 / rho), s_min ** (1 / rho)
        grid = (hi + ramp * (lo - hi)) ** rho
        x0 = None
        for j in range(n):
            x0 = ctx.denoise(x, grid[j].to(sigma.dtype))
            x = ctx.ddim_step(x, x0, grid[j], grid[j + 1], 0.0)
        # x now sits at sigma_min: read x0 off it with one more model evaluation
        return ctx.denoise(x, grid[-1].to(sigma.dtype))

    def step(self, i: int, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
        ctx = self.ctx
        x0_hat = self.ode_x0(x, sigma).float()
        a, b = ctx.coefficients(sigma)
        r2 = (b / a) ** 2 if a > 0 else math.inf  # VE noise level of x0 at this sigma
        total = ctx.total_steps
        ratio = i / max(1, total - 1)
        lr = self.opt["lr"] * (1 + ratio * (self.opt["lr_min_ratio"] - 1))
        tau2 = self.opt["tau"] ** 2
        v = x0_hat.clone()
        penalised = ctx.equireg is not None and ctx.equireg.is_active(i, total)
        # v <- v + lr * (-grad + (x0_hat - v) / r2) + sqrt(2 lr) n, written as
        # v <- keep * v + pull - lr * grad + sqrt(2 lr) n with the per-level constants below
        # (in place: a handful of small ops per iteration instead of a dozen)
        prior_rate = lr / r2 if math.isfinite(r2) else 0.0
        keep = 1.0 - prior_rate
        pull = x0_hat * prior_rate
        noise_scale = math.sqrt(2 * lr)
        for _ in range(self.opt["langevin_steps"]):
            grad = self.data_gradient(v) if self.analytic else None
            if grad is None or penalised:
                with grad_enabled():
                    leaf = v.detach().clone().requires_grad_(True)
                    model_x = leaf.to(x.dtype)
                    potential = ctx.penalty(model_x, i)
                    if grad is None:
                        data = ctx.residual_sqnorm(ctx.decode(model_x)) / tau2
                        potential = data if potential is None else data + potential
                    (auto,) = torch.autograd.grad(potential.sum(), leaf)
                grad = auto.float() if grad is None else grad.add_(auto.float())
            v = (v * keep).add_(pull).add_(grad, alpha=-lr).add_(ctx.randn_like(v), alpha=noise_scale)
        if not torch.isfinite(v).all():
            raise FloatingPointError(
                f"daps: the Langevin chain diverged at step {i} (sigma {float(sigma):.4g}); lower 'lr' "
                f"(now {self.opt['lr']}) or raise 'tau' (now {self.opt['tau']})")
        x0 = v.to(x.dtype)
        if float(sigma_next) == 0.0:
            return x0, x0
        return ctx.renoise(sigma_next, ctx.randn_like(x0), x0), x0
