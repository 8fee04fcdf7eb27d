"""Plain DDIM/Euler sampling with no measurement: the baseline every posterior solver is compared to."""

from __future__ import annotations

from .common import Strategy, Tensor


class Unconditional(Strategy):
    """x_{t-1} = DDIM(x_t, x0_hat); eta = 0 is the deterministic Euler/DDIM step, eta = 1 DDPM."""

    name = "unconditional"
    options = {"eta": 0.0}
    option_docs = {"eta": "DDIM eta: 0 deterministic (Euler), 1 ancestral (DDPM)"}

    def check_options(self) -> None:
        self.require_non_negative("eta")

    def step(self, i: int, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
        x0 = self.ctx.denoise(x, sigma)
        return self.ctx.ddim_step(x, x0, sigma, sigma_next, self.opt["eta"]), x0
