"""Contract and unit tests of the posterior solvers (samplers.solvers)."""

from __future__ import annotations

import math

import pytest
import torch

from samplers.operators import make
from samplers.solvers import (
    COMMON_OPTIONS,
    SOLVERS,
    STRATEGIES,
    flow_noise_scaling,
    get_solver,
    solver_options,
    ve_noise_scaling,
)
from samplers.solvers.common import BatchedAdam, SolverContext

POSTERIOR = ["dps", "psld", "resample", "sitcom", "daps"]
# small, fast settings that keep every code path (ReSample's consistency phases included)
FAST = {
    "dps": {},
    "psld": {},
    "resample": {"interval": 1, "pixel_iters": 20, "latent_iters": 20},
    "sitcom": {"inner_steps": 3, "equi_steps": 2},
    "daps": {"langevin_steps": 3, "ode_steps": 2, "lr": 1e-3, "tau": 0.5},
}


class GaussianPrior:
    """Exact denoiser of N(mean, I) in the VE space: D(x; s) = mean + (x - mean) / (1 + s^2)."""

    def __init__(self, mean: torch.Tensor):
        self.mean = mean
        self.calls = 0

    def __call__(self, x, sigma, **kwargs):
        self.calls += 1
        s2 = sigma.reshape(-1, *([1] * (x.dim() - 1))).to(x.dtype) ** 2
        return self.mean.to(x) + (x - self.mean.to(x)) / (1 + s2)


def karras(n: int, smax: float = 20.0, smin: float = 0.05) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    s = (smax ** (1 / 7) + ramp * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7
    return torch.cat([s, torch.zeros(1)])


def setup(batch=2, shape=(1, 6, 5), seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    matrix = torch.randn(3, d, generator=g) / math.sqrt(d)  # singular values of order 1
    op = make("matrix", matrix=matrix)
    x_true = torch.randn(batch, *shape, generator=g) * 0.5
    y = op(x_true)
    prior = GaussianPrior(torch.zeros(1, *shape))
    sigmas = karras(6)
    x = (sigmas[0] * torch.randn(batch, *shape, generator=g)).to(dtype)
    return prior, x, sigmas, op, y


def run(name, seed=0, **overrides):
    prior, x, sigmas, op, y = setup(seed=seed)
    opts = {**FAST[name], **overrides}
    return get_solver(name)(prior, x, sigmas, extra_args={"seed": 1}, operator=op, measurement=y, **opts)


def test_registry_and_options():
    assert set(SOLVERS) == {"dps", "psld", "resample", "sitcom", "daps", "unconditional"}
    with pytest.raises(ValueError, match="valid solvers"):
        get_solver("ddrm")
    for name in SOLVERS:
        opts = solver_options(name)
        assert not set(opts) & set(COMMON_OPTIONS), name
        assert set(STRATEGIES[name].option_docs) == set(opts), f"{name}: every option is documented"


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_unknown_option_rejected(name):
    prior, x, sigmas, op, y = setup()
    with pytest.raises(TypeError, match="unknown option.*'step_sise'.*valid options"):
        get_solver(name)(prior, x, sigmas, operator=op, measurement=y, step_sise=1.0)


def test_required_options_and_bad_values():
    prior, x, sigmas, op, y = setup()
    with pytest.raises(TypeError, match="'operator'"):
        get_solver("dps")(prior, x, sigmas, measurement=y)
    with pytest.raises(TypeError, match="'measurement'"):
        get_solver("dps")(prior, x, sigmas, operator=op)
    with pytest.raises(ValueError, match="measurement batch is 3"):
        get_solver("dps")(prior, x, sigmas, operator=op, measurement=torch.cat([y, y[:1]]))
    with pytest.raises(ValueError, match="'step_size' must be a positive number"):
        get_solver("dps")(prior, x, sigmas, operator=op, measurement=y, step_size=0.0)
    with pytest.raises(ValueError, match="NaN or Inf"):
        get_solver("dps")(prior, x, sigmas, operator=op, measurement=y * float("nan"))
    with pytest.raises(ValueError, match="'inner_steps' must be an integer"):
        get_solver("sitcom")(prior, x, sigmas, operator=op, measurement=y, inner_steps=2.5)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_callback_every_step_and_no_graph(name):
    prior, x, sigmas, op, y = setup()
    seen = []
    out = get_solver(name)(prior, x, sigmas, callback=seen.append, operator=op, measurement=y,
                           **FAST.get(name, {}))
    assert [c["i"] for c in seen] == list(range(len(sigmas) - 1))
    for c in seen:
        assert set(c) >= {"x", "i", "sigma", "sigma_hat", "denoised"}
        assert not c["x"].requires_grad and not c["denoised"].requires_grad
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()
    assert not out.requires_grad and out.grad_fn is None


@pytest.mark.parametrize("name", POSTERIOR)
def test_runs_under_inference_mode(name):
    """ComfyUI runs every prompt under inference_mode with inference-tensor inputs."""
    prior, x, sigmas, op, y = setup()
    with torch.inference_mode():
        xi, yi, si = x.clone(), y.clone(), sigmas.clone()
        out = get_solver(name)(prior, xi, si, operator=op, measurement=yi, **FAST[name])
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", POSTERIOR)
def test_seeded_determinism(name):
    a = run(name, seed=0)
    b = run(name, seed=0)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["resample", "sitcom", "daps", "dps"])
def test_solver_seed_changes_stochastic_solvers(name):
    prior, x, sigmas, op, y = setup()
    f = get_solver(name)
    a = f(prior, x, sigmas, operator=op, measurement=y, seed=1, **FAST[name])
    b = f(prior, x, sigmas, operator=op, measurement=y, seed=2, **FAST[name])
    assert not torch.equal(a, b)


@pytest.mark.parametrize("name,opts", [("dps", {"eta": 0.0}), ("psld", {}), ("unconditional", {})])
def test_batch_of_n_equals_n_runs(name, opts):
    """Deterministic configurations: each sample of a batch equals the same sample run alone."""
    prior, x, sigmas, op, y = setup(batch=3)
    f = get_solver(name)
    batch = f(prior, x, sigmas, operator=op, measurement=y, **opts)
    for i in range(3):
        alone = f(prior, x[i : i + 1], sigmas, operator=op, measurement=y[i : i + 1], **opts)
        torch.testing.assert_close(batch[i : i + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", POSTERIOR)
def test_float64_stays_float64(name):
    prior, x, sigmas, op, y = setup(dtype=torch.float64)
    out = get_solver(name)(prior, x, sigmas.double(), operator=op, measurement=y, **FAST[name])
    assert out.dtype == torch.float64


@pytest.mark.parametrize("name", POSTERIOR)
def test_reduces_measurement_residual(name):
    """Every posterior solver fits the measurement better than unconditional sampling does."""
    prior, x, sigmas, op, y = setup(batch=4, seed=3)
    base = get_solver("unconditional")(prior, x, sigmas, operator=op, measurement=y)
    out = get_solver(name)(prior, x, sigmas, operator=op, measurement=y, **FAST[name])
    assert (op(out) - y).norm() < (op(base) - y).norm()


def _ctx(noise_scaling):
    return SolverContext(model=None, extra_args={}, sigmas=torch.tensor([1.0, 0.0]),
                         options={"noise_scaling": noise_scaling}, generator=torch.Generator().manual_seed(0),
                         batch=1)


def test_noise_space_coefficients():
    ve, flow = _ctx(ve_noise_scaling), _ctx(flow_noise_scaling)
    s = torch.tensor(3.0)
    assert ve.coefficients(s) == (1.0, 3.0)
    assert ve.vp_scale(s) == pytest.approx(math.sqrt(10))
    assert ve.alpha_bar(s) == pytest.approx(1 / 10)  # abar = 1 / (1 + sigma^2)
    assert flow.coefficients(torch.tensor(0.25)) == (0.75, 0.25)
    assert ve.vp_step_factor(s, torch.tensor(1.0)) == pytest.approx(math.sqrt(10) * math.sqrt(2))


def test_ddim_step_matches_k_diffusion_ancestral():
    """VE space, eta = 1: the same distribution as k-diffusion's Euler-ancestral step
    (sigma_down / sigma_up from get_ancestral_step), derived independently here."""
    ctx = _ctx(ve_noise_scaling)
    s, s_next = torch.tensor(2.0), torch.tensor(1.0)
    x, x0 = torch.full((1, 4), 3.0), torch.full((1, 4), 1.0)
    sigma_up = min(1.0, math.sqrt(s_next**2 * (s**2 - s_next**2) / s**2))
    sigma_down = math.sqrt(s_next**2 - sigma_up**2)
    expected_mean = x0 + sigma_down * (x - x0) / s
    ctx.randn_like = lambda t: torch.zeros_like(t)  # noqa: E731 - isolate the mean
    torch.testing.assert_close(ctx.ddim_step(x, x0, s, s_next, eta=1.0), expected_mean)
    ctx.randn_like = lambda t: torch.ones_like(t)  # noqa: E731 - isolate the noise coefficient
    torch.testing.assert_close(ctx.ddim_step(x, x0, s, s_next, eta=1.0), expected_mean + sigma_up)
    # eta = 0 is the Euler step of the probability-flow ODE
    torch.testing.assert_close(ctx.ddim_step(x, x0, s, s_next, 0.0), x + (s_next - s) * (x - x0) / s)


def test_flow_space_euler_step():
    ctx = _ctx(flow_noise_scaling)
    s, s_next = torch.tensor(0.8), torch.tensor(0.5)
    x, x0 = torch.full((1, 3), 0.3), torch.full((1, 3), -0.4)
    # rectified flow: velocity (x - x0) / sigma, Euler x + (s_next - s) * v
    torch.testing.assert_close(ctx.ddim_step(x, x0, s, s_next, 0.0), x + (s_next - s) * (x - x0) / s)


@pytest.mark.parametrize("space", ["ve", "flow"])
def test_unconditional_reaches_point_mass(space):
    """A point-mass prior's denoiser always returns the point: every step lands on it at sigma 0."""
    point = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = torch.tensor([0.99, 0.6, 0.3, 0.0]) if space == "flow" else karras(5)
    scaling = flow_noise_scaling if space == "flow" else ve_noise_scaling
    x = scaling(sigmas[0], torch.randn_like(point), point)
    out = get_solver("unconditional")(lambda x, s, **k: point.clone(), x, sigmas, operator=make("identity"),
                                      measurement=point, noise_scaling=scaling)
    torch.testing.assert_close(out, point)


class CountingPenalty:
    """Stand-in for EquiReg: active on even steps only; counts evaluations."""

    def __init__(self):
        self.calls = []

    def is_active(self, step, total_steps):
        return step % 2 == 0

    def __call__(self, x, step, total_steps):
        assert self.is_active(step, total_steps)
        self.calls.append(step)
        return (x.reshape(x.shape[0], -1) ** 2).sum(1) * 0.01


@pytest.mark.parametrize("name", ["dps", "psld", "daps"])
def test_equireg_enters_the_differentiated_loss(name):
    reg = CountingPenalty()
    with_reg = run(name, equireg=reg)
    assert reg.calls and all(s % 2 == 0 for s in reg.calls)
    assert not torch.equal(with_reg, run(name))


def test_equireg_in_resample_consistency_objective():
    reg = CountingPenalty()
    run("resample", equireg=reg)
    assert reg.calls, "the penalty must enter the consistency optimisation"


def test_batched_adam_freezes_inactive_samples_and_matches_torch():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(2, 5, generator=g)
    grad = torch.randn(2, 5, generator=g)
    opt = BatchedAdam(p, lr=0.1, weight_decay=0.01)
    out = opt.step(p, grad, torch.tensor([True, False]))
    assert torch.equal(out[1], p[1])
    ref = p[:1].clone().requires_grad_(True)
    torch_opt = torch.optim.AdamW([ref], lr=0.1, weight_decay=0.01)
    ref.grad = grad[:1].clone()
    torch_opt.step()
    torch.testing.assert_close(out[:1], ref.detach())


@pytest.mark.parametrize("name", POSTERIOR)
def test_real_equireg_changes_every_posterior_solver(name):
    """The real EquiReg (non-equivariant conv as f, hflip) plugs into every posterior solver."""
    from samplers.equireg import EquiReg

    conv = torch.nn.Conv2d(1, 2, 3, padding=1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=torch.Generator().manual_seed(5)))
    conv.requires_grad_(False)
    reg = EquiReg(conv, group="hflip", form="equi", alpha=0.5, schedule="every")
    overrides = {"interval": 1} if name == "resample" else {}
    assert not torch.equal(run(name, equireg=reg, **overrides), run(name, **overrides))


class _NotMarkedLinear(torch.nn.Module):
    """The same operator, not declared linear: solvers must differentiate it with autograd."""

    linear = False

    def __init__(self, op):
        super().__init__()
        self.op = op

    def forward(self, x):
        return self.op(x)


def _linear_pixel_problem(op_name, size, levels):
    """A linear operator of ``op_name`` on (2, 1, *size) images, its measurement of random images, a
    Gaussian pixel prior, a ``levels``-level schedule and the initial state (and the generator)."""
    kwargs = {"super_resolution": {"factor": 4}, "gaussian_blur": {"kernel_size": 9, "sigma": 2.0},
              "inpainting": {"mask_type": "random", "image_size": size}}[op_name]
    op = make(op_name, **kwargs)
    g = torch.Generator().manual_seed(0)
    y = op(torch.rand(2, 1, *size, generator=g) * 2 - 1)
    prior = GaussianPrior(torch.zeros(1, 1, *size))
    sigmas = karras(levels)
    x = sigmas[0] * torch.randn(2, 1, *size, generator=g)
    return op, prior, sigmas, x, y, g


@pytest.mark.parametrize("size", [(16, 16), (37, 31)])
@pytest.mark.parametrize("op_name", ["super_resolution", "gaussian_blur", "inpainting"])
def test_daps_closed_form_data_gradient_matches_autograd(op_name, size):
    # DAPS uses 2 A^T (A v - y) / tau^2 for pixel models with linear operators; it must give the
    # chain autograd gives (odd sizes, where A^T cannot tell the image size, fall back to autograd)
    from samplers.solvers.daps import DAPS

    op, prior, sigmas, x, y, g = _linear_pixel_problem(op_name, size, levels=4)
    opts = {"langevin_steps": 5, "ode_steps": 2, "lr": 1e-3, "tau": 0.5, "measurement": y, "seed": 1}
    closed = get_solver("daps")(prior, x, sigmas, operator=op, **opts)
    auto = get_solver("daps")(prior, x, sigmas, operator=_NotMarkedLinear(op), **opts)
    torch.testing.assert_close(closed, auto, rtol=1e-4, atol=1e-4)
    ctx = SolverContext(model=prior, extra_args={}, sigmas=sigmas, generator=g, batch=2,
                        options={**COMMON_OPTIONS, **DAPS.options, **opts, "operator": op})
    assert DAPS(ctx).analytic


@pytest.mark.parametrize("size", [(16, 16), (37, 31)])
@pytest.mark.parametrize("op_name", ["super_resolution", "gaussian_blur", "inpainting"])
def test_resample_closed_form_consistency_matches_autograd(op_name, size):
    # ReSample's pixel-space consistency loops use 2 A^T (A x - y) / m for linear operators; they
    # must follow the same path as with autograd, with and without an EquiReg penalty on a pixel model
    from samplers.equireg import EquiReg

    op, prior, sigmas, x, y, g = _linear_pixel_problem(op_name, size, levels=6)
    conv = torch.nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():  # seeded weights: the test must not depend on the global RNG's state
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) / 3)
        conv.bias.copy_(torch.randn(conv.bias.shape, generator=g) / 3)
    for reg in (None, EquiReg(conv, group="hflip", alpha=0.5)):
        opts = {**FAST["resample"], "measurement": y, "seed": 1, "equireg": reg}
        closed = get_solver("resample")(prior, x, sigmas, operator=op, **opts)
        if reg is not None:
            reg.reseed(0)
        auto = get_solver("resample")(prior, x, sigmas, operator=_NotMarkedLinear(op), **opts)
        torch.testing.assert_close(closed, auto, rtol=1e-4, atol=1e-4)


def test_batched_adam_fast_and_masked_paths_agree_with_torch_over_steps():
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(3, 4, 5, generator=g)
    grads = [torch.randn(3, 4, 5, generator=g) for _ in range(6)]
    all_on = torch.ones(3, dtype=torch.bool)
    fast, masked = BatchedAdam(p0, lr=0.05, weight_decay=0.01), BatchedAdam(p0, lr=0.05, weight_decay=0.01)
    masked._uniform_steps = None  # force the per-sample (masked) path
    ref = p0.clone().requires_grad_(True)
    torch_opt = torch.optim.AdamW([ref], lr=0.05, weight_decay=0.01)
    pf, pm = p0, p0
    for grad in grads:
        pf, pm = fast.step(pf, grad, all_on), masked.step(pm, grad, all_on)
        ref.grad = grad.clone()
        torch_opt.step()
    assert fast._uniform_steps == len(grads)
    torch.testing.assert_close(pf, pm)
    torch.testing.assert_close(pf, ref.detach())
    # freezing one sample later switches to per-sample counts; the frozen sample does not move
    out = fast.step(pf, grads[0], torch.tensor([True, False, True]))
    assert fast._uniform_steps is None and torch.equal(out[1], pf[1])
    assert fast.t.tolist() == [7.0, 6.0, 7.0]
