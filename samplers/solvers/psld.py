"""Posterior Sampling with Latent Diffusion (Rout et al. 2023), LituRout/PSLD @ d734647.

Per step (``ldm/models/diffusion/psld.py``): with ``z0 = z0_hat(z_t)`` and ``x = D(z0)``,
``z_{t-1} = DDIM(z_t) - grad_{z_t}[ gamma * ||E(A^+ y + (I - A^+ A) x) - z0|| + omega * ||A x - y|| ]``
(the "gluing" term keeps the decoded image's measured part consistent with the encoder). With
EquiReg, ``alpha * P(z0)`` is added inside the bracket (EquiReg's ``src/psld`` hook).

Differences from the reference, on purpose:
- the back-projection uses the operator's pseudo-inverse A^+ where it has one (masks, resizing,
  dense matrices), else its true adjoint; the reference's DPS operators use ad-hoc "transposes"
  (nearest upsampling for SR, identity for blurs);
- the reference adds measurement noise to A x before the norm; that only adds variance to the
  gradient and is left out;
- norms are per sample and summed (batch = independent runs);
- the gradient step is on the VP state as in the reference (step 1), translated like DPS.
Pixel models work too (E and D are then identities, and the gluing term is ||A^+(y - A x)||).
Defaults: gamma 0.1, omega 1 (``scripts/inverse.py``); eta 0 (DDIM).
"""

from __future__ import annotations

from .common import Strategy, Tensor


class PSLD(Strategy):
    name = "psld"
    options = {"gamma": 0.1, "omega": 1.0, "eta": 0.0}
    option_docs = {
        "gamma": "weight of the gluing (encoder consistency) term (reference 0.1; box inpainting 1e-2)",
        "omega": "weight of the measurement term (reference 1; box inpainting 0.1)",
        "eta": "DDIM eta of the underlying step (reference 0)",
    }

    def check_options(self) -> None:
        self.require_non_negative("gamma", "omega", "eta")
        op = self.ctx.operator
        if self.opt["gamma"] > 0 and not getattr(op, "linear", False):
            raise ValueError("psld: the gluing term needs a linear operator; set gamma=0 for "
                             f"{type(op).__name__}")

    def back_project(self, y: Tensor) -> Tensor:
        op = self.ctx.operator
        return op.pseudo_inverse(y) if getattr(op, "has_pseudo_inverse", False) else op.adjoint(y)

    def step(self, i: int, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
        ctx, gamma, omega = self.ctx, self.opt["gamma"], self.opt["omega"]

        def loss_fn(z0: Tensor) -> Tensor:
            img = ctx.decode(z0)
            loss = omega * ctx.residual_norm(img)
            if gamma > 0:
                op = ctx.operator
                y = ctx.measurement.reshape(op(img).shape)
                glued = self.back_project(y) + img - self.back_project(op(img))
                gap = ctx.encode(glued, z0).float() - z0.float()
                loss = loss + gamma * gap.reshape(gap.shape[0], -1).norm(dim=1)
            penalty = ctx.penalty(z0, i)
            return loss if penalty is None else loss + penalty

        grad, z0 = ctx.loss_gradient(x, sigma, loss_fn)
        x_next = ctx.ddim_step(x, z0, sigma, sigma_next, self.opt["eta"])
        return x_next - ctx.vp_step_factor(sigma, sigma_next) * grad, z0
