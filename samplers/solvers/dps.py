"""Diffusion Posterior Sampling (Chung et al. 2023), DPS2022/diffusion-posterior-sampling @ effbde7.

Per step (reference ``condition_methods.py``, ``PosteriorSampling``):
``x_{t-1} = x'_{t-1} - zeta * grad_{x_t} ||y - A(x0_hat(x_t))||`` where x' is the unconditional
ancestral step and the norm is **not** squared. Here the norm is taken per sample and summed, so
a batch behaves like independent runs (the reference takes one norm over the whole batch, which is
the same for batch 1). With EquiReg the differentiated loss becomes ``||y - A x0_hat|| + alpha *
P(x0_hat)`` (the EquiReg README's DPS pattern). Latent models: ``x0_hat`` is decoded first.

Sigma parameterisation: zeta is the reference's step on the VP state; on our state the update is
``-zeta * k_t * k_{t-1} * grad_x`` (see :mod:`samplers.solvers.common`), so the reference's task
step sizes (0.3 SR/blur, 0.5 inpainting, 1.0 phase retrieval, ``configs/*_config.yaml``) carry over.
"""

from __future__ import annotations

from .common import Strategy, Tensor


class DPS(Strategy):
    name = "dps"
    options = {"step_size": 1.0, "eta": 1.0}
    option_docs = {
        "step_size": "zeta, DPS step size on the VP state (reference: 0.3 SR/deblur, 0.5 inpainting, "
                     "1.0 phase retrieval)",
        "eta": "eta of the underlying DDIM step (1 = DDPM ancestral as in DPS, 0 = deterministic)",
    }

    def check_options(self) -> None:
        self.require_positive("step_size")
        self.require_non_negative("eta")

    def step(self, i: int, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
        ctx = self.ctx

        def loss_fn(x0: Tensor) -> Tensor:
            loss = ctx.residual_norm(ctx.decode(x0))
            penalty = ctx.penalty(x0, i)
            return loss if penalty is None else loss + penalty

        grad, x0 = ctx.loss_gradient(x, sigma, loss_fn)
        x_next = ctx.ddim_step(x, x0, sigma, sigma_next, self.opt["eta"])
        factor = self.opt["step_size"] * ctx.vp_step_factor(sigma, sigma_next)
        return x_next - factor * grad, x0
