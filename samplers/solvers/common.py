"""The shared sampling loop and the pieces every posterior solver uses.

A solver is a small *strategy* (one object per run) whose ``step`` maps the state at noise level
``sigma`` to the state at ``sigma_next``; :func:`run_solver` owns the loop, the options, the
random numbers and the callback. Solvers follow the k-diffusion/ComfyUI ``KSAMPLER`` contract::

    fn(model, x, sigmas, extra_args=None, callback=None, disable=None, **options)

where ``model(x, sigma * s_in, **extra_args)`` returns the denoised x0 in the model's space.

Noise spaces. The state is ``x = a(sigma) * x0 + b(sigma) * noise``, given by the option
``noise_scaling(sigma, noise, x0)`` (default ``x0 + sigma * noise``, the variance-exploding space
of EPS and V models; ComfyUI's flow models use ``(1 - sigma) * x0 + sigma * noise``). ``a`` and
``b`` are read off that callable, so every rule below is written once for both spaces. The
reference solvers are written for the variance-preserving (VP) DDPM state
``x_vp = sqrt(abar) x0 + sqrt(1 - abar) noise``; with ``k = sqrt(a^2 + b^2)`` we have
``x_vp = x / k`` and ``sqrt(abar) = a / k``. That is how step sizes defined on ``x_vp`` are
translated: a VP update ``x_vp' = x_vp'' - zeta * grad_{x_vp} L`` at ``t -> t-1`` becomes
``x' = x'' - zeta * k_t * k_{t-1} * grad_x L`` (see :meth:`SolverContext.vp_step_factor`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

Tensor = torch.Tensor
NoiseScaling = Callable[[Tensor, Tensor, Tensor], Tensor]


def ve_noise_scaling(sigma: Tensor, noise: Tensor, x0: Tensor) -> Tensor:
    """Variance-exploding space of EPS/V models: x = x0 + sigma * noise."""
    return x0 + sigma * noise


def flow_noise_scaling(sigma: Tensor, noise: Tensor, x0: Tensor) -> Tensor:
    """Rectified-flow space (SD3/Flux in ComfyUI): x = (1 - sigma) * x0 + sigma * noise."""
    return (1.0 - sigma) * x0 + sigma * noise


#: Options every solver accepts, with their defaults. ``operator`` and ``measurement`` are required.
COMMON_OPTIONS: dict[str, Any] = {
    "operator": None,
    "measurement": None,
    "decode": None,
    "encode": None,
    "equireg": None,
    "noise_scaling": None,
    "sigma_y": 0.05,
    "seed": None,
    "clip_denoised": False,
}

COMMON_OPTION_DOCS: dict[str, str] = {
    "operator": "measurement operator A (a samplers.operators module), acting on images in [-1, 1]",
    "measurement": "measurement y, shape (B, ...) or (1, ...) in A's output space",
    "decode": "differentiable map from the model's x0 to an image in [-1, 1] (identity for pixel models)",
    "encode": "map from an image in [-1, 1] to the model's space (identity for pixel models)",
    "equireg": "optional samplers.equireg.EquiReg penalty on the model-space x0 estimate",
    "noise_scaling": "noise_scaling(sigma, noise, x0) of the model's space (default x0 + sigma*noise)",
    "sigma_y": "standard deviation of the measurement noise (SITCOM's stopping rule)",
    "seed": "seed of the solver's own noise (default: extra_args['seed'], else 0)",
    "clip_denoised": "clamp the x0 estimate to [-1, 1] before decoding (pixel models, as DPS does)",
}


def validate_options(solver: str, options: Mapping[str, Any], specific: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``options`` with the defaults; reject unknown names listing the valid ones."""
    valid = {**COMMON_OPTIONS, **specific}
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"{solver}: unknown option(s) {unknown}; valid options are {sorted(valid)}")
    merged = {**valid, **options}
    if merged["operator"] is None:
        raise TypeError(f"{solver}: the option 'operator' (a measurement operator) is required")
    if merged["measurement"] is None:
        raise TypeError(f"{solver}: the option 'measurement' (the measured tensor y) is required")
    if not isinstance(merged["measurement"], torch.Tensor):
        got = type(merged["measurement"]).__name__
        raise TypeError(f"{solver}: 'measurement' must be a torch.Tensor, got {got}")
    if not torch.isfinite(merged["measurement"]).all():
        raise ValueError(f"{solver}: 'measurement' contains NaN or Inf values")
    if float(merged["sigma_y"]) < 0:
        raise ValueError(f"{solver}: 'sigma_y' must be >= 0, got {merged['sigma_y']}")
    return merged


@contextmanager
def grad_enabled():
    """Autograd on, even inside ComfyUI's ``inference_mode`` and the samplers' ``no_grad``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@dataclass
class SolverContext:
    """Everything a strategy needs for one run; built by :func:`run_solver`."""

    model: Callable[..., Tensor]
    extra_args: dict[str, Any]
    sigmas: Tensor
    options: dict[str, Any]
    generator: torch.Generator
    batch: int

    # ---- options -----------------------------------------------------------------------------
    @property
    def operator(self) -> torch.nn.Module:
        return self.options["operator"]

    @property
    def measurement(self) -> Tensor:
        return self.options["measurement"]

    @property
    def equireg(self):
        return self.options["equireg"]

    @property
    def total_steps(self) -> int:
        return len(self.sigmas) - 1

    # ---- noise space -------------------------------------------------------------------------
    def coefficients(self, sigma: Tensor) -> tuple[float, float]:
        """(a, b) with x = a * x0 + b * noise at this sigma, read off ``noise_scaling``."""
        scaling = self.options["noise_scaling"]
        one = torch.ones((), dtype=torch.float64)
        zero = torch.zeros((), dtype=torch.float64)
        s = sigma.detach().to("cpu", torch.float64)
        return float(scaling(s, zero, one)), float(scaling(s, one, zero))

    def vp_scale(self, sigma: Tensor) -> float:
        """k = sqrt(a^2 + b^2): the VP state is x / k."""
        a, b = self.coefficients(sigma)
        return math.hypot(a, b)

    def alpha_bar(self, sigma: Tensor) -> float:
        """The VP cumulative signal level abar = (a / k)^2 at this sigma."""
        a, b = self.coefficients(sigma)
        return a * a / (a * a + b * b)

    def vp_step_factor(self, sigma: Tensor, sigma_next: Tensor) -> float:
        """Factor turning a gradient step defined on the VP state into one on x (module docstring)."""
        return self.vp_scale(sigma) * self.vp_scale(sigma_next)

    def renoise(self, sigma: Tensor, noise: Tensor, x0: Tensor) -> Tensor:
        return self.options["noise_scaling"](sigma.to(x0.dtype), noise, x0)

    def ddim_step(self, x: Tensor, x0: Tensor, sigma: Tensor, sigma_next: Tensor, eta: float = 0.0) -> Tensor:
        """DDIM step from sigma to sigma_next given the x0 estimate; eta=0 is the Euler/ODE step,
        eta=1 the DDPM ancestral step. In the VE space this equals k-diffusion's
        Euler-ancestral step; in the flow space the same formula is the flow DDIM step."""
        a, b = self.coefficients(sigma)
        a_n, b_n = self.coefficients(sigma_next)
        if b == 0:  # already at sigma = 0
            return x0
        eps = (x - a * x0) / b
        if b_n == 0:
            return a_n * x0
        # fraction of fresh noise: eta * sqrt(1 - SNR(t) / SNR(t-1)), the DDIM sigma_t / sqrt(1 - abar_prev)
        ratio = 0.0 if a == 0 else (b_n * a) ** 2 / ((a_n * b) ** 2)
        c = eta * math.sqrt(max(0.0, 1.0 - ratio))
        c = min(c, 1.0)
        if c == 0:
            return a_n * x0 + b_n * eps
        return a_n * x0 + b_n * (math.sqrt(1.0 - c * c) * eps + c * self.randn_like(x))

    # ---- randomness --------------------------------------------------------------------------
    def randn_like(self, x: Tensor) -> Tensor:
        """Gaussian noise from the run's seeded CPU generator (same numbers on every device)."""
        return torch.randn(x.shape, generator=self.generator, dtype=torch.float32).to(x.device, x.dtype)

    # ---- model, decoder, loss ----------------------------------------------------------------
    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """The model's x0 estimate at (x, sigma), without autograd."""
        with torch.no_grad():
            return self._denoise(x, sigma)

    def _denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        s_in = x.new_ones([x.shape[0]])
        out = self.model(x, sigma.to(x.dtype) * s_in, **self.extra_args)
        if self.options["clip_denoised"]:
            out = out.clamp(-1.0, 1.0)
        return out

    def denoise_for_grad(self, x: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """(x_leaf, x0) with x0 differentiable w.r.t. the fresh leaf x_leaf (call inside grad_enabled)."""
        x_leaf = x.detach().clone().requires_grad_(True)
        return x_leaf, self._denoise(x_leaf, sigma.detach().clone())

    def loss_gradient(self, x: Tensor, sigma: Tensor,
                      loss_fn: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """(grad_x sum_i loss_i, x0): the gradient w.r.t. the state of a per-sample loss (B,) of the x0
        estimate, and that estimate, detached. The graph is freed before returning."""
        with grad_enabled():
            x_leaf, x0 = self.denoise_for_grad(x, sigma)
            (grad,) = torch.autograd.grad(loss_fn(x0).sum(), x_leaf)
        return grad.to(x.dtype), x0.detach()

    def decode(self, x0: Tensor) -> Tensor:
        decode = self.options["decode"]
        img = x0 if decode is None else decode(x0)
        return img.float()

    def encode(self, img: Tensor, like: Tensor) -> Tensor:
        encode = self.options["encode"]
        z = img if encode is None else encode(img)
        return z.to(like.dtype)

    def residual(self, img: Tensor) -> Tensor:
        """A(img) - y in float32, per sample flattened to (B, m)."""
        y = self.measurement
        r = self.operator(img.float()) - y
        return r.reshape(r.shape[0], -1)

    def normal_residual(self, img: Tensor) -> tuple[Tensor, Tensor]:
        """(r, A^T r) with r = A(img) - y in A's output shape, without autograd: for a linear A,
        grad ||A img - y||^2 = 2 A^T r in closed form. A^T r may not have img's shape when A^T cannot
        tell the image size (odd sizes); callers check."""
        op = self.operator
        r = op(img)
        r = r - self.measurement.reshape(r.shape)
        return r, op.adjoint(r)

    def residual_norm(self, img: Tensor) -> Tensor:
        """Per-sample unsquared residual norm ||y_i - A(img_i)|| (B,), DPS's data term."""
        return self.residual(img).norm(dim=1)

    def residual_sqnorm(self, img: Tensor) -> Tensor:
        return self.residual(img).pow(2).sum(dim=1)

    def penalty(self, x0: Tensor, step: int) -> Tensor | None:
        """EquiReg penalty (B,) on the x0 estimate, or None when off at this step (nothing evaluated)."""
        reg = self.equireg
        if reg is None or not reg.is_active(step, self.total_steps):
            return None
        return reg(x0, step, self.total_steps).float()


class Strategy:
    """One solver's guidance/consistency rule. Subclasses set ``name`` and ``options`` and
    implement :meth:`step`; :meth:`finish` may post-process the final state."""

    name: str = "strategy"
    #: solver-specific options with their defaults
    options: dict[str, Any] = {}
    #: one line per option, used for tooltips and the README
    option_docs: dict[str, str] = {}

    def __init__(self, ctx: SolverContext):
        self.ctx = ctx
        self.opt = ctx.options
        self.check_options()

    def check_options(self) -> None:
        """Validate solver-specific option values (raise ValueError naming the option)."""

    def step(self, i: int, x: Tensor, sigma: Tensor, sigma_next: Tensor) -> tuple[Tensor, Tensor]:
        """Return (x at sigma_next, current x0 estimate)."""
        raise NotImplementedError

    def finish(self, x: Tensor) -> Tensor:
        return x

    # helpers for option checks
    def require_positive(self, *names: str) -> None:
        for name in names:
            value = self.opt[name]
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{self.name}: option '{name}' must be a positive number, got {value!r}")

    def require_non_negative(self, *names: str) -> None:
        for name in names:
            value = self.opt[name]
            if not (isinstance(value, (int, float)) and value >= 0 and math.isfinite(value)):
                raise ValueError(f"{self.name}: option '{name}' must be a number >= 0, got {value!r}")

    def require_int(self, *names: str, minimum: int = 1) -> None:
        for name in names:
            value = self.opt[name]
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= minimum):
                raise ValueError(
                    f"{self.name}: option '{name}' must be an integer >= {minimum}, got {value!r}")


def _seed_from(options: dict[str, Any], extra_args: dict[str, Any]) -> int:
    seed = options["seed"]
    if seed is None:
        seed = extra_args.get("seed", 0)
    return int(seed) % (2**63)


def run_solver(
    strategy_cls: type[Strategy],
    model: Callable[..., Tensor],
    x: Tensor,
    sigmas: Tensor,
    extra_args: dict[str, Any] | None = None,
    callback: Callable[[dict[str, Any]], Any] | None = None,
    disable: bool | None = None,
    **options: Any,
) -> Tensor:
    """The loop shared by every solver (the k-diffusion sampler contract).

    ``disable`` is accepted for compatibility (k-diffusion's progress-bar switch); the core prints
    nothing, progress is reported through ``callback`` every step.
    """
    del disable
    extra_args = {} if extra_args is None else dict(extra_args)
    opts = validate_options(strategy_cls.name, options, strategy_cls.options)
    if opts["noise_scaling"] is None:
        opts["noise_scaling"] = ve_noise_scaling
    if not isinstance(sigmas, torch.Tensor) or sigmas.dim() != 1 or len(sigmas) < 2:
        raise ValueError(f"{strategy_cls.name}: 'sigmas' must be a 1-D tensor with at least 2 entries")
    if not torch.isfinite(x).all():
        raise ValueError(f"{strategy_cls.name}: the initial state x contains NaN or Inf values")
    batch = x.shape[0]
    y = opts["measurement"]
    if y.shape[0] not in (1, batch):
        raise ValueError(f"{strategy_cls.name}: the measurement batch is {y.shape[0]}, expected 1 or the "
                         f"batch size {batch}")
    opts["measurement"] = y.detach().to(x.device, torch.float32).expand(batch, *y.shape[1:]).clone()
    opts["operator"] = opts["operator"].to(x.device)
    generator = torch.Generator(device="cpu").manual_seed(_seed_from(opts, extra_args))
    ctx = SolverContext(model=model, extra_args=extra_args, sigmas=sigmas, options=opts,
                        generator=generator, batch=batch)
    strategy = strategy_cls(ctx)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x, denoised = strategy.step(i, x, sigma, sigma_next)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
    return strategy.finish(x)


class BatchedAdam:
    """Adam(W) on a batch of independent problems, with per-sample freezing.

    ``torch.optim`` shares nothing between elements either, but it cannot stop one sample while the
    others go on; this lets solvers keep the reference's per-image early stopping while a batch of
    N behaves like N separate runs.
    """

    def __init__(self, param: Tensor, lr: float, weight_decay: float = 0.0, betas=(0.9, 0.999), eps=1e-8):
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = torch.zeros(param.shape[0], dtype=torch.float32, device=param.device)
        # Steps taken while every sample was active (then all share one step count and the bias
        # corrections are plain numbers); None once any sample has been frozen.
        self._uniform_steps: int | None = 0

    def step(self, param: Tensor, grad: Tensor, active: Tensor) -> Tensor:
        """Return the updated param; samples where ``active`` is False are left unchanged."""
        b1, b2 = self.betas
        if self._uniform_steps is not None and bool(active.all()):
            # Common case, in place and with scalar bias corrections: ReSample's consistency loops
            # take thousands of these steps, where each small tensor op is a visible cost.
            self._uniform_steps += 1
            n = self._uniform_steps
            self.t += 1
            self.m.lerp_(grad, 1 - b1)
            self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
            denom = (self.v / (1 - b2**n)).sqrt_().add_(self.eps)
            update = (self.m / denom).mul_(1 / (1 - b1**n))
            if self.weight_decay:
                update.add_(param, alpha=self.weight_decay)
            return param.add(update, alpha=-self.lr)
        self._uniform_steps = None
        mask = active.view(-1, *([1] * (param.dim() - 1))).to(param.dtype)
        self.t = self.t + active.float()
        t = self.t.clamp(min=1).view(-1, *([1] * (param.dim() - 1))).to(param.dtype)
        self.m = torch.where(mask.bool(), b1 * self.m + (1 - b1) * grad, self.m)
        self.v = torch.where(mask.bool(), b2 * self.v + (1 - b2) * grad * grad, self.v)
        m_hat = self.m / (1 - b1**t)
        v_hat = self.v / (1 - b2**t)
        update = m_hat / (v_hat.sqrt() + self.eps)
        if self.weight_decay:
            update = update + self.weight_decay * param
        return param - self.lr * mask * update
