"""ReSample (Song et al. 2024), soominkwon/resample @ 3e332b2, ``ddim.py::resample_sampling``.

Per step, with the reference's index counting down ``index = T - 1 - i``:
1. unconditional DDIM step (eta 0) -> x';
2. DPS-style step ``x' -= (0.5 * abar_t) * grad_{x_t} ||y - A(D(x0_hat))||`` (the reference passes
   ``scale = a_t * 0.5``), translated to our state like DPS;
3. if ``0 < index <= T - T//3`` and ``index % interval == 0`` — time travel and hard data consistency:
   a. ``inter_steps`` further unconditional DDIM steps from x' to sigma = 0 give a cleaner x0;
   b. pixel optimisation in the middle third (``index >= T//3``): ``argmin_x ||y - A x||^2/m`` from
      D(x0), AdamW lr 1e-2, <= 2000 iterations, stop at MSE < 1e-6, then ``z = E(x)``; latent
      optimisation in the last third: ``argmin_z ||y - A(D(z))||^2/m`` from x0, AdamW lr 5e-3, <= 500
      iterations, stop at MSE < 1e-6 or when the loss is above its value 200 iterations earlier;
   c. stochastic resampling: ``x_{t-1} ~ N(.)`` proportional to ``q(x_{t-1} | z) N(x'; x_{t-1}, s)`` with
      ``s = gamma * (1 - abar_prev)/(1 - abar_t) * (1 - abar_t/abar_prev)`` (gamma 40), on the VP state:
      ``(s sqrt(abar_prev) z + (1 - abar_prev) x') / (s + 1 - abar_prev)
      + sqrt(1/(1/s + 1/(1 - abar_prev))) n``.
4. after the loop, one final latent optimisation of x0.
EquiReg enters the consistency objective: ``+ alpha * P(z)`` in the latent optimisation (and in the
pixel optimisation for pixel-space models, where x is the model's space).

Differences from the reference, on purpose: x0_hat uses the correct sqrt(1 - abar) (the reference's
``pseudo_x0`` uses 1 - abar); norms and stopping rules are per sample (batch = independent runs).
"""

from __future__ import annotations

import math

import torch

from .common import BatchedAdam, Strategy, Tensor, grad_enabled


class ReSample(Strategy):
    name = "resample"
    options = {
        "step_scale": 0.5,
        "gamma": 40.0,
        "interval": 10,
        "inter_steps": 5,
        "pixel_lr": 1e-2,
        "pixel_iters": 2000,
        "latent_lr": 5e-3,
        "latent_iters": 500,
        "mse_tol": 1e-6,
        "weight_decay": 0.01,
        "final_optimisation": True,
    }
    option_docs = {
        "step_scale": "DPS step = step_scale * abar_t on the VP state (reference 0.5)",
        "gamma": "resampling variance factor (reference 40)",
        "interval": "hard data consistency every `interval` steps (reference 10)",
        "inter_steps": "DDIM steps used to look ahead to x0 before consistency (reference 5)",
        "pixel_lr": "AdamW learning rate of the pixel-space optimisation (reference 1e-2)",
        "pixel_iters": "maximum pixel-space iterations (reference 2000)",
        "latent_lr": "AdamW learning rate of the latent-space optimisation (reference 5e-3)",
        "latent_iters": "maximum latent-space iterations (reference 500)",
        "mse_tol": "stop an optimisation when the measurement MSE is below this (reference 1e-6)",
        "weight_decay": "AdamW weight decay (torch's default 0.01, as the reference uses it)",
        "final_optimisation": "run one latent optimisation on the final sample (reference: yes)",
    }

    def check_options(self) -> None:
        self.require_non_negative("step_scale", "weight_decay", "mse_tol")
        self.require_positive("gamma", "pixel_lr", "latent_lr")
        self.require_int("interval", "inter_steps")
        self.require_int("pixel_iters", "latent_iters", minimum=0)

    # ---- consistency optimisations -----------------------------------------------------------
    def _mse(self, img: Tensor) -> Tensor:
        return self.ctx.residual(img).pow(2).mean(dim=1)

    def _optimise(self, start: Tensor, value_and_grad, lr: float, iters: int,
                  stall_window: int | None) -> Tensor:
        """Minimise per sample with early stopping; ``value_and_grad(v)`` returns the (B,) MSE that
        the stopping rules watch and the gradient of the full objective w.r.t. v."""
        tol = self.opt["mse_tol"]
        v = start.detach().float().clone()
        adam = BatchedAdam(v, lr, weight_decay=self.opt["weight_decay"])
        active = torch.ones(v.shape[0], dtype=torch.bool, device=v.device)
        history: list[Tensor] = []
        for it in range(iters):
            mse, grad = value_and_grad(v)
            active = active & (mse >= tol)
            if stall_window is not None:
                history.append(mse)
                if it >= stall_window:
                    active = active & ~(mse > history[it - stall_window])
            if not active.any():
                break
            v = adam.step(v, grad, active)
        return v.to(start.dtype)

    @staticmethod
    def _autograd(objective):
        """value_and_grad from objective(leaf) -> (mse, total), differentiating total."""

        def value_and_grad(v: Tensor) -> tuple[Tensor, Tensor]:
            with grad_enabled():
                leaf = v.detach().clone().requires_grad_(True)
                mse, total = objective(leaf)
                (grad,) = torch.autograd.grad(total.sum(), leaf)
            return mse.detach(), grad

        return value_and_grad

    def _with_penalty(self, mse: Tensor, z: Tensor, step: int) -> tuple[Tensor, Tensor]:
        penalty = self.ctx.penalty(z, step)
        return mse, (mse if penalty is None else mse + penalty)

    def latent_optimisation(self, z0: Tensor, step: int) -> Tensor:
        ctx = self.ctx

        def objective(z: Tensor):
            return self._with_penalty(self._mse(ctx.decode(z.to(z0.dtype))), z, step)

        value_and_grad = self._autograd(objective)
        if ctx.options["decode"] is None:  # pixel model: the "latent" is the image itself
            value_and_grad = self._closed_form(z0.float(), step, penalised=True) or value_and_grad
        lr, iters = self.opt["latent_lr"], self.opt["latent_iters"]
        return self._optimise(z0, value_and_grad, lr, iters, stall_window=200)

    def pixel_optimisation(self, z0: Tensor, step: int) -> Tensor:
        ctx = self.ctx
        pixel_model = ctx.options["decode"] is None
        with torch.no_grad():
            img0 = ctx.decode(z0)

        def objective(img: Tensor):
            mse = self._mse(img)
            return self._with_penalty(mse, img, step) if pixel_model else (mse, mse)

        value_and_grad = self._closed_form(img0, step, penalised=pixel_model) or self._autograd(objective)
        lr, iters = self.opt["pixel_lr"], self.opt["pixel_iters"]
        img = self._optimise(img0, value_and_grad, lr, iters, stall_window=None)
        with torch.no_grad():
            return ctx.encode(img, z0)

    def _closed_form(self, like: Tensor, step: int, penalised: bool):
        """value_and_grad of the image-space MSE ||A x - y||^2 / m in closed form, 2 A^T (A x - y) / m,
        for a linear operator (plus the EquiReg penalty's gradient by autograd when ``penalised`` and
        active); None when A is not linear or A^T does not return x's shape (an odd size whose
        measurement size is ambiguous). The consistency loops run up to thousands of iterations per
        step, where an autograd graph per iteration costs more than the arithmetic."""
        ctx = self.ctx
        if not getattr(ctx.operator, "linear", False):
            return None
        with torch.no_grad():
            probe, probe_grad = ctx.normal_residual(like.float())
        if probe_grad.shape != like.shape:
            return None
        m = probe[0].numel()
        with_penalty = penalised and ctx.equireg is not None and ctx.equireg.is_active(step, ctx.total_steps)

        def value_and_grad(v: Tensor) -> tuple[Tensor, Tensor]:
            r, at_r = ctx.normal_residual(v)
            mse = r.reshape(r.shape[0], -1).pow(2).mean(dim=1)
            grad = at_r * (2.0 / m)
            if with_penalty:
                with grad_enabled():
                    leaf = v.detach().clone().requires_grad_(True)
                    (pen_grad,) = torch.autograd.grad(ctx.penalty(leaf, step).sum(), leaf)
                grad = grad + pen_grad
            return mse, grad

        return value_and_grad

    # ---- the step ----------------------------------------------------------------------------
    def step(self, i: int, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
        ctx = self.ctx
        grad, z0 = ctx.loss_gradient(x, sigma, lambda z: ctx.residual_norm(ctx.decode(z)))
        x_prime = ctx.ddim_step(x, z0, sigma, sigma_next, 0.0)
        scale = self.opt["step_scale"] * ctx.alpha_bar(sigma)
        x_prime = x_prime - scale * ctx.vp_step_factor(sigma, sigma_next) * grad
        del grad

        total = ctx.total_steps
        index = total - 1 - i
        split = total // 3
        if not (0 < index <= total - split and index % self.opt["interval"] == 0):
            return x_prime, z0

        z_ahead = self.look_ahead(x_prime, i + 1)
        if index >= split:
            z_hat = self.pixel_optimisation(z_ahead, i)
        else:
            z_hat = self.latent_optimisation(z_ahead, i)
        return self.stochastic_resample(z_hat, x_prime, sigma, sigma_next), z_hat

    def look_ahead(self, x: Tensor, start: int) -> Tensor:
        """x0 after ``inter_steps`` DDIM steps from sigmas[start] down to 0 (on a sub-grid)."""
        ctx = self.ctx
        remaining = ctx.sigmas[start:]
        n = min(self.opt["inter_steps"], len(remaining) - 1)
        idx = torch.linspace(0, len(remaining) - 1, n + 1).round().long()
        grid = remaining[idx]
        x0 = ctx.denoise(x, grid[0])
        for j in range(n):
            if j > 0:
                x0 = ctx.denoise(x, grid[j])
            x = ctx.ddim_step(x, x0, grid[j], grid[j + 1], 0.0)
        return x0

    def stochastic_resample(self, z_hat: Tensor, x_prime: Tensor, sigma: Tensor,
                            sigma_next: Tensor) -> Tensor:
        ctx = self.ctx
        abar_t, abar_prev = ctx.alpha_bar(sigma), ctx.alpha_bar(sigma_next)
        k_prev = ctx.vp_scale(sigma_next)
        s = self.opt["gamma"] * (1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)
        if s <= 0:  # repeated sigma: nothing to resample towards
            return x_prime
        z_prime = x_prime / k_prev
        mean = (s * math.sqrt(abar_prev) * z_hat + (1 - abar_prev) * z_prime) / (s + 1 - abar_prev)
        std = math.sqrt(1.0 / (1.0 / s + 1.0 / (1 - abar_prev)))
        return k_prev * (mean + std * ctx.randn_like(mean))

    def finish(self, x: Tensor) -> Tensor:
        if not self.opt["final_optimisation"] or float(self.ctx.sigmas[-1]) != 0.0:
            return x
        # the final state sits at sigma = 0, so it is the model-space sample itself
        return self.latent_optimisation(x, self.ctx.total_steps - 1)
