"""The GMM benchmark harness (bench.gmm): CLI contract, argument errors, and the harness itself
checked with stand-in solvers whose output distribution is known."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import samplers.solvers
from bench import gmm
from samplers.metrics import sliced_wasserstein
from samplers.priors import mcgdiff_problem, vp_linear_sigmas

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"solver", "dim", "obs", "steps", "seed", "samples", "equireg", "sw_to_posterior",
        "sw_prior_to_posterior", "sw_posterior_noise_floor", "seconds"}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "bench.gmm", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_json_with_the_unconditional_solver() -> None:
    proc = run_cli("--solver", "unconditional", "--dim", "8", "--obs", "2", "--steps", "10",
                   "--samples", "200", "--seed", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert set(result) == KEYS
    got = tuple(result[k] for k in ("solver", "dim", "obs", "steps", "seed", "samples", "equireg"))
    assert got == ("unconditional", 8, 2, 10, 1, 200, False)
    assert result["seconds"] >= 0
    # the posterior noise floor is far below the prior-vs-posterior distance of the benchmark problem
    assert 0 < result["sw_posterior_noise_floor"] < 0.5 * result["sw_prior_to_posterior"]
    assert result["sw_to_posterior"] > 0


def test_cli_unknown_solver_is_a_usage_error_listing_the_solvers() -> None:
    proc = run_cli("--solver", "nope", "--json")
    assert proc.returncode == 2
    assert "usage:" in proc.stderr and "nope" in proc.stderr
    for name in samplers.solvers.SOLVERS:
        assert name in proc.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dim", "0"], "dim"),
        (["--obs", "0"], "obs"),
        (["--dim", "4", "--obs", "5"], "obs"),
        (["--steps", "0"], "steps"),
        (["--steps", "1001"], "steps"),
        (["--samples", "1"], "samples"),
        (["--seed", "-1"], "seed"),
        (["--option", "zeta"], "malformed option"),
        (["--option", "=3"], "malformed option"),
        (["--option", "a b=1"], "malformed option"),
        (["--option", "eta=0", "--option", "eta=1"], "twice"),
        (["--option", "operator=1"], "harness"),
        (["--dim", "6", "--obs", "2", "--equireg"], "multiple of 4"),
        (["--dim", "5", "--obs", "2", "--equireg"], "multiple of 4"),
        (["--steps", "2", "--samples", "4", "--option", "not_an_option=1"], "not_an_option"),
        (["--steps", "2", "--samples", "4", "--option", "eta=-1"], "eta"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        gmm.main(["--solver", "unconditional", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err


def test_readable_summary(capsys) -> None:
    assert gmm.main(["--solver", "unconditional", "--steps", "3", "--samples", "50"]) == 0
    out = capsys.readouterr().out
    assert "sliced W2" in out and "solver=unconditional" in out and "{" not in out


# ---------------------------------------------------------------------------------------------- harness


def exact_posterior_solver(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """Stand-in solver: recovers A from the operator and returns exact posterior draws."""
    op, y, sigma_y = options["operator"], options["measurement"], options["sigma_y"]
    eye = torch.eye(x.shape[1])
    A = op(eye).T.double()  # column j of A is A e_j
    post = model.posterior(A, sigma_y, y[0].double())
    g = torch.Generator().manual_seed(12345 + int(extra_args["seed"]))
    return post.sample(x.shape[0], g).float()


def prior_solver(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    """Stand-in solver that ignores the measurement: returns prior draws."""
    return model.sample(x.shape[0], torch.Generator().manual_seed(999)).float()


def test_harness_with_an_exact_solver_reaches_the_noise_floor(monkeypatch) -> None:
    seen = {}

    def spy(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        seen.update(x=x, sigmas=sigmas, extra_args=extra_args, **options)
        return exact_posterior_solver(model, x, sigmas, extra_args, callback, disable, **options)

    monkeypatch.setitem(samplers.solvers.SOLVERS, "exact", spy)
    monkeypatch.setitem(samplers.solvers.SOLVERS, "prior", prior_solver)
    result = gmm.run_gmm("exact", dim=8, obs=2, steps=7, samples=1000, seed=2, return_samples=True)
    problem = mcgdiff_problem(8, 2, 2)
    # the solver was called with the benchmark's problem and grid
    torch.testing.assert_close(seen["sigmas"], vp_linear_sigmas(7))
    assert seen["x"].shape == (1000, 8) and seen["x"].dtype == torch.float32
    assert seen["measurement"].shape == (1000, 2) and seen["extra_args"] == {"seed": 2}
    torch.testing.assert_close(seen["measurement"][0], problem.y.float())
    assert seen["sigma_y"] == pytest.approx(problem.sigma_y) and seen["equireg"] is None
    torch.testing.assert_close(seen["operator"](torch.eye(8)).T, problem.A.float())
    # the initial state is the noisy marginal at sigma_max: its spread is sqrt(sigma_max^2 + prior variance)
    assert float(seen["x"].std()) == pytest.approx(float(vp_linear_sigmas(7)[0]), rel=0.1)

    floor = result["sw_posterior_noise_floor"]
    assert result["sw_to_posterior"] < 2.0 * floor
    assert result["sw_prior_to_posterior"] > 10.0 * floor
    assert result["x"].shape == (1000, 8)
    torch.testing.assert_close(result["posterior"].weights, problem.posterior().weights)

    bad = gmm.run_gmm("prior", dim=8, obs=2, steps=7, samples=1000, seed=2)
    assert bad["sw_to_posterior"] > 10.0 * floor
    assert bad["sw_to_posterior"] == pytest.approx(bad["sw_prior_to_posterior"], rel=0.25)


def test_run_gmm_is_deterministic_and_validates() -> None:
    a = gmm.run_gmm("unconditional", dim=4, obs=1, steps=3, samples=64, seed=5)
    b = gmm.run_gmm("unconditional", dim=4, obs=1, steps=3, samples=64, seed=5)
    drop = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
    assert drop(a) == drop(b) and set(a) == KEYS
    with pytest.raises(ValueError, match="valid solvers"):
        gmm.run_gmm("nope")
    with pytest.raises(ValueError, match="harness"):
        gmm.run_gmm("unconditional", options={"measurement": 1})
    with pytest.raises(TypeError, match="unknown option"):
        gmm.run_gmm("unconditional", steps=2, samples=4, options={"zeta": 1.0})


def test_equireg_penalty_is_the_distance_to_the_denoiser() -> None:
    prior = mcgdiff_problem(8, 2, 0).prior
    reg = gmm.gmm_equireg(prior, 8)
    x = 5.0 * torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    # the prior is half-swap invariant, so ||x - T^-1 D(T x)|| = ||x - D(x)||
    expected = gmm.EQUIREG_SETTINGS["alpha"] * (x - prior.denoise(x, 0.5)).norm(dim=1)
    torch.testing.assert_close(reg(x, 0, 10), expected, rtol=1e-5, atol=1e-6)
    near = prior.sample(6, torch.Generator().manual_seed(1)).float()
    assert float(reg(near, 0, 10).mean()) < float(reg(x, 0, 10).mean())
    with pytest.raises(ValueError, match="multiple of 4"):
        gmm.gmm_equireg(mcgdiff_problem(6, 2, 0).prior, 6)


def test_run_gmm_with_equireg_passes_the_regularizer(monkeypatch) -> None:
    seen = {}

    def spy(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        seen["equireg"] = options["equireg"]
        return prior_solver(model, x, sigmas, **options)

    monkeypatch.setitem(samplers.solvers.SOLVERS, "spy", spy)
    result = gmm.run_gmm("spy", dim=8, obs=2, steps=2, samples=16, equireg=True)
    assert result["equireg"] is True
    reg = seen["equireg"]
    penalty = reg(torch.zeros(3, 8), 0, 2)
    assert penalty.shape == (3,) and torch.isfinite(penalty).all()
    # a real solver accepts it end to end
    real = gmm.run_gmm("dps", dim=8, obs=2, steps=3, samples=32, equireg=True)
    assert real["sw_to_posterior"] is not None


def test_sliced_w_uses_the_same_directions_for_all_values(monkeypatch) -> None:
    # the floor is the SW between two posterior draws computed with the harness's fixed directions
    monkeypatch.setitem(samplers.solvers.SOLVERS, "exact", exact_posterior_solver)
    r = gmm.run_gmm("exact", dim=4, obs=1, steps=2, samples=300, seed=3, return_samples=True)
    post = r["posterior"]
    ref = post.sample(300, gmm._stream(3, 2))
    ref2 = post.sample(300, gmm._stream(3, 3))
    expected = float(sliced_wasserstein(ref2, ref, 256, generator=gmm._stream(3, 5)))
    assert r["sw_posterior_noise_floor"] == pytest.approx(expected, rel=1e-12)
