"""Exact-posterior benchmark: posterior solvers on the 25-component GMM problem of MCGdiff.

Usage::

    python -m bench.gmm --dim 8 --obs 4 --solver dps --steps 100 --samples 2000 --seed 0 --json \\
        [--equireg] [--option key=value ...]

or, from Python, :func:`run_gmm`. One run:

1. ``problem = mcgdiff_problem(dim, obs, seed)`` (:mod:`samplers.priors.gmm`): the MCGdiff prior
   (identity covariances, grid means tiled along the dimension, squared-Gaussian weights) and
   measurement ``y = A x* + sigma_y n``; its exact posterior is a GMM (closed form).
2. The solver runs on the exact VE denoiser of the prior (the prior itself is the ``model``) with the
   sigmas of :func:`samplers.priors.vp_linear_sigmas` (standard linear DDPM schedule, uniform
   respacing; not MCGdiff's decreasing-beta schedule, see that function) and ``operator =
   samplers.operators.make("matrix", matrix=A)``. The initial state is an exact draw of the noisy
   marginal at sigma_max: ``x0 + sigma_max * noise`` with ``x0 ~ prior`` (the prior's spread, about 16,
   is not negligible next to sigma_max ~ 157, so the usual ``sigma_max * noise`` would add an error
   that no solver can remove).
3. Reported: ``sw_to_posterior``, the sliced W2 (:func:`samplers.metrics.sliced_wasserstein`,
   256 directions, the same directions for all three values) between the solver's ``samples`` outputs
   and ``samples`` exact posterior draws; ``sw_prior_to_posterior`` (prior draws vs posterior draws: the
   error of ignoring the measurement); ``sw_posterior_noise_floor`` (two independent sets of
   posterior draws: the value of a perfect sampler at this sample size); ``seconds``, the solver's
   wall time. A non-finite value (a diverged solver) is reported as ``null`` in JSON.

Random numbers: the problem uses a generator seeded with ``seed``; the harness draws (initial state,
posterior and prior reference samples, SW directions) use separate generators derived from ``seed``;
the solver gets ``extra_args={"seed": seed}``.

``--equireg`` (EquiReg where it is meaningful). The benchmark prior is exactly invariant under
swapping the two halves of the vector when ``dim`` is a multiple of 4: the means repeat the pair
``(-8i, -8j)``, so both halves are the same pattern and every component is mapped onto itself. (With
``dim = 2 mod 4`` the swap maps component (i, j) to (j, i), whose weight differs, so the prior is not
invariant; odd ``dim`` has no halves.) The vector is viewed as a (B, 1, 2, dim/2) "image" whose rows
are the two halves, so the group ``vflip`` swaps them; the MPE function is
``f = prior.denoise(., sigma_f = 0.5)`` (an exact MMSE projection towards the data), the form
``equicon`` (``||x - T^-1 f(T x)||``: the distance to the denoiser's projection, small near the data),
``alpha = 0.01``, ``schedule = "every"``, ``reduction = "norm"``. Solvers pass (B, dim) vectors to
the regularizer, so a small :class:`~samplers.equireg.EquiReg` subclass reshapes them to
(B, 1, 2, dim/2) first. ``--equireg`` with ``dim`` not a multiple of 4 is a usage error.

Exit status: 0 on success, 2 for bad arguments (argparse usage errors, including options that the
solver rejects).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

from samplers.metrics import sliced_wasserstein
from samplers.priors.gmm import GaussianMixture, mcgdiff_problem, vp_linear_sigmas

__all__ = ["EQUIREG_SETTINGS", "RESERVED_OPTIONS", "gmm_equireg", "main", "run_gmm"]

#: the EquiReg configuration of ``--equireg`` (see the module docstring)
EQUIREG_SETTINGS: dict[str, Any] = {
    "sigma_f": 0.5,
    "group": "vflip",
    "form": "equicon",
    "alpha": 0.01,
    "schedule": "every",
    "reduction": "norm",
}

#: solver options set by the harness itself; passing them in ``options`` is an error
RESERVED_OPTIONS = ("operator", "measurement", "sigma_y", "equireg", "decode", "encode", "noise_scaling")

#: the number of SW directions and the largest number of steps (the DDPM schedule has 1000 timesteps)
SW_DIRECTIONS = 256
MAX_STEPS = 1000

_RESULT_KEYS = ("solver", "dim", "obs", "steps", "seed", "samples", "equireg", "sw_to_posterior",
                "sw_prior_to_posterior", "sw_posterior_noise_floor", "seconds")


def _solver_names() -> list[str]:
    from samplers.solvers import SOLVERS

    return sorted(SOLVERS)


def _stream(seed: int, k: int) -> torch.Generator:
    """Generator k of the harness, derived from ``seed`` (k >= 1; the problem itself uses ``seed``)."""
    return torch.Generator(device="cpu").manual_seed((seed * 1_000_003 + 7919 * k) % (2**63))


def gmm_equireg(prior: GaussianMixture, dim: int):
    """The ``--equireg`` regularizer for (B, dim) vectors (module docstring); dim must be a multiple of 4."""
    from samplers.equireg import EquiReg

    if dim % 4 != 0:
        raise ValueError(f"--equireg needs dim to be a multiple of 4 (the prior is invariant under swapping "
                         f"the vector's halves only then), got dim={dim}")
    half = dim // 2
    sigma_f = EQUIREG_SETTINGS["sigma_f"]

    def f(v: torch.Tensor) -> torch.Tensor:
        # v: (B, 1, 2, dim/2); the prior flattens the trailing dimensions and keeps v's shape
        return prior.denoise(v, sigma_f)

    class VectorEquiReg(EquiReg):
        """EquiReg on (B, dim) vectors viewed as (B, 1, 2, dim/2) images (rows = the two halves)."""

        def __call__(self, x, step, total_steps=None, *, element=None):
            if isinstance(x, torch.Tensor) and x.dim() == 2 and x.shape[1] == dim:
                x = x.reshape(x.shape[0], 1, 2, half)
            return super().__call__(x, step, total_steps, element=element)

    settings = {k: v for k, v in EQUIREG_SETTINGS.items() if k != "sigma_f"}
    return VectorEquiReg(f, **settings)


def _check_args(solver: str, dim: int, obs: int, steps: int, samples: int, seed: int, equireg: bool,
                options: dict[str, Any] | None) -> None:
    """ValueError/TypeError naming the bad argument (the CLI turns them into usage errors)."""
    for name, value, low in (("dim", dim, 1), ("obs", obs, 1), ("steps", steps, 1), ("samples", samples, 2),
                             ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected an int, got {value!r}")
        if value < low:
            raise ValueError(f"{name}: expected an int >= {low}, got {value}")
    if obs > dim:
        raise ValueError(f"obs: expected 1 <= obs <= dim = {dim}, got {obs}")
    if steps > MAX_STEPS:
        raise ValueError(f"steps: expected at most {MAX_STEPS} (the DDPM schedule's timesteps), got {steps}")
    names = _solver_names()
    if solver not in names:
        raise ValueError(f"solver: unknown solver {solver!r}; valid solvers are {', '.join(names)}")
    if equireg and dim % 4 != 0:
        raise ValueError(f"--equireg needs dim to be a multiple of 4 (the prior is invariant under swapping "
                         f"the vector's halves only then), got dim={dim}")
    if options is not None:
        if not isinstance(options, dict):
            raise TypeError(f"options: expected a dict of solver options, got {type(options).__name__}")
        reserved = sorted(set(options) & set(RESERVED_OPTIONS))
        if reserved:
            raise ValueError(f"options: {reserved} are set by the harness and cannot be passed as options "
                             f"(reserved: {', '.join(RESERVED_OPTIONS)})")


def _finite_or_none(value: torch.Tensor) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def run_gmm(solver: str, dim: int = 8, obs: int = 4, steps: int = 100, samples: int = 2000, seed: int = 0,
            equireg: bool = False, options: dict[str, Any] | None = None,
            return_samples: bool = False) -> dict[str, Any]:
    """Run ``solver`` on the seeded MCGdiff GMM problem and compare with the exact posterior.

    Returns a dict with the keys solver, dim, obs, steps, seed, samples, equireg, sw_to_posterior,
    sw_prior_to_posterior, sw_posterior_noise_floor (floats, None if not finite) and seconds (solver
    wall time). With ``return_samples`` it also holds ``"x"`` (the solver's float32 samples (samples,
    dim)), ``"problem"`` (:class:`~samplers.priors.GMMProblem`) and ``"posterior"`` (the exact
    posterior :class:`~samplers.priors.GaussianMixture`). ``options`` are passed to the solver as
    keyword options (unknown ones make the solver raise TypeError). See the module docstring.
    """
    from samplers.operators import make
    from samplers.solvers import get_solver

    _check_args(solver, dim, obs, steps, samples, seed, equireg, options)
    fn = get_solver(solver)
    problem = mcgdiff_problem(dim, obs, seed)
    prior = problem.prior
    posterior = problem.posterior()

    sigmas = vp_linear_sigmas(steps)
    g_init = _stream(seed, 1)
    x_init = prior.sample(samples, generator=g_init).float()
    x_init = x_init + sigmas[0] * torch.randn(samples, dim, generator=g_init)
    op = make("matrix", matrix=problem.A.float())
    y = problem.y.float()[None].expand(samples, obs)
    reg = gmm_equireg(prior, dim) if equireg else None

    start = time.perf_counter()
    x = fn(prior, x_init, sigmas, extra_args={"seed": seed}, callback=None, disable=True, operator=op,
           measurement=y, sigma_y=float(problem.sigma_y), equireg=reg, **(options or {}))
    seconds = time.perf_counter() - start
    x = x.detach().float().reshape(samples, dim)

    reference = posterior.sample(samples, generator=_stream(seed, 2))
    reference2 = posterior.sample(samples, generator=_stream(seed, 3))
    prior_samples = prior.sample(samples, generator=_stream(seed, 4))

    def sw(a: torch.Tensor, b: torch.Tensor) -> float | None:
        # the same directions for every value, so they can be compared with each other
        return _finite_or_none(sliced_wasserstein(a, b, SW_DIRECTIONS, generator=_stream(seed, 5)))

    result: dict[str, Any] = {
        "solver": solver,
        "dim": dim,
        "obs": obs,
        "steps": steps,
        "seed": seed,
        "samples": samples,
        "equireg": bool(equireg),
        "sw_to_posterior": sw(x, reference),
        "sw_prior_to_posterior": sw(prior_samples, reference),
        "sw_posterior_noise_floor": sw(reference2, reference),
        "seconds": seconds,
    }
    if return_samples:
        result.update({"x": x, "problem": problem, "posterior": posterior})
    return result


# ---------------------------------------------------------------------------------------------------------
# Command line


def _parse_option(text: str) -> tuple[str, Any]:
    """``key=value``; the value is parsed as JSON (numbers, true/false, null), else kept as a string."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not key.isidentifier() or raw == "":
        raise argparse.ArgumentTypeError(f"malformed option {text!r}; expected key=value, e.g. zeta=0.5")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gmm",
        description="Run a posterior solver on the 25-component GMM problem of MCGdiff and report the sliced "
                    "Wasserstein-2 distance to the exact posterior.")
    parser.add_argument("--solver", required=True, help="solver name (see the error message for the list)")
    parser.add_argument("--dim", type=int, default=8, help="dimension d of x (default 8)")
    parser.add_argument("--obs", type=int, default=4, help="measurements, 1 <= obs <= dim (default 4)")
    parser.add_argument("--steps", type=int, default=100, help=f"sampler steps, 1..{MAX_STEPS} (default 100)")
    parser.add_argument("--samples", type=int, default=2000, help="samples per set, >= 2 (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="problem and sampler seed, >= 0 (default 0)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    parser.add_argument("--equireg", action="store_true",
                        help="add the EquiReg penalty (half-swap symmetry; dim must be a multiple of 4)")
    parser.add_argument("--option", action="append", default=[], type=_parse_option, metavar="KEY=VALUE",
                        help="solver option (repeatable); the value is parsed as JSON when possible")
    return parser


def _summary(result: dict[str, Any]) -> str:
    def fmt(v: float | None) -> str:
        return "nan/inf" if v is None else f"{v:.4f}"

    return "\n".join([
        f"GMM benchmark: solver={result['solver']} dim={result['dim']} obs={result['obs']} "
        f"steps={result['steps']} samples={result['samples']} seed={result['seed']} "
        f"equireg={result['equireg']}",
        f"  sliced W2, solver -> exact posterior:   {fmt(result['sw_to_posterior'])}",
        f"  sliced W2, prior  -> exact posterior:   {fmt(result['sw_prior_to_posterior'])}",
        f"  sliced W2, posterior noise floor:       {fmt(result['sw_posterior_noise_floor'])}",
        f"  solver wall time:                       {result['seconds']:.2f} s",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    options: dict[str, Any] = {}
    for key, value in args.option:
        if key in options:
            parser.error(f"option {key!r} given twice")
        options[key] = value
    try:
        _check_args(args.solver, args.dim, args.obs, args.steps, args.samples, args.seed, args.equireg,
                    options)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    try:
        result = run_gmm(args.solver, dim=args.dim, obs=args.obs, steps=args.steps, samples=args.samples,
                         seed=args.seed, equireg=args.equireg, options=options)
    except (TypeError, ValueError) as err:
        if not options:
            raise  # not an option problem: a real error, keep the traceback
        parser.error(f"solver {args.solver!r} rejected the options {options}: {err}")
    if args.json:
        print(json.dumps({k: result[k] for k in _RESULT_KEYS}, allow_nan=False))
    else:
        print(_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
