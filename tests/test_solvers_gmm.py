"""Every posterior solver on the exact-posterior harness (bench.gmm), with its documented defaults.

d = 8, d_y = 4, 100 steps, seed 0, 2000 samples: the sliced W2 between the solver's samples and exact
posterior samples must be at most a third of the prior-to-posterior distance (what ignoring the
measurement costs). The figures are recorded in README.md (``python -m bench.gmm``).
"""

from __future__ import annotations

import pytest

from bench.gmm import run_gmm

SETTINGS = {"dim": 8, "obs": 4, "steps": 100, "samples": 2000, "seed": 0}

RESAMPLE_XFAIL = pytest.mark.xfail(
    strict=True,
    reason="measured: ReSample reaches sw_to_posterior 11.73 against a bound of 5.59 (prior 16.77). Its hard "
    "data consistency projects each sample onto {Ax = y} from wherever its look-ahead landed and resamples "
    "tightly around it (gamma 40), so with noisy measurements (sigma_y 0.52 here) the samples keep the "
    "mixture components they started near instead of the posterior's component weights. Not tuned per seed.",
)


@pytest.mark.parametrize(
    "solver",
    ["dps", "psld", pytest.param("resample", marks=RESAMPLE_XFAIL), "sitcom", "daps"],
)
def test_solver_approaches_exact_posterior(solver):
    result = run_gmm(solver, **SETTINGS)
    assert result["sw_to_posterior"] is not None, f"{solver} diverged"
    assert result["sw_to_posterior"] <= result["sw_prior_to_posterior"] / 3, result


def test_unconditional_baseline_samples_the_prior():
    """The baseline ignores y: its distance to the posterior is the prior's (the harness is not lenient)."""
    result = run_gmm("unconditional", **SETTINGS)
    assert result["sw_to_posterior"] > result["sw_prior_to_posterior"] / 3


def test_dps_with_equireg_runs_on_the_harness():
    result = run_gmm("dps", equireg=True, **SETTINGS)
    assert result["sw_to_posterior"] is not None
    assert result["sw_to_posterior"] <= result["sw_prior_to_posterior"] / 3, result
