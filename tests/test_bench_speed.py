"""bench.speed: call counting, cost accounting, peak memory, and a quick CLI run."""

from __future__ import annotations

import math
import sys

import pytest
import torch
from bench_models import one_torch_thread, tiny_models  # noqa: F401 - autouse fixture

from bench import speed, tasks


def test_counted_splits_grad_and_nograd_calls():
    lin = torch.nn.Linear(3, 3)
    c = speed.Counted(lin)
    with torch.no_grad():
        c(torch.randn(2, 3))
    c(torch.randn(2, 3))
    c(torch.randn(2, 3))
    assert (c.grad, c.nograd) == (2, 1)
    c.reset()
    assert (c.grad, c.nograd) == (0, 0)


def test_bench_one_counts_follow_the_solver_definitions():
    models = tiny_models()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    op = tasks.get_task("sr4").build()
    y = tasks.measure(op, x, 1)
    units = speed.measure_units(models, ["pixel", "latent"], ["none", "equi"], 2, 1, 0.1, torch.device("cpu"))
    steps = 3
    # DPS: one differentiated denoiser call per step; Equi evaluates f(x) and f(T_g x) on every step
    base = speed.bench_one(models, "pixel", "dps", "none", y, op, steps, 1, units, 0.1, memory=False)
    assert base["calls"]["model"] == (steps, 0)
    equi = speed.bench_one(models, "pixel", "dps", "equi", y, op, steps, 1, units, 0.1, memory=False)
    assert equi["calls"]["f"] == (2 * steps, 0)
    fwd, fwd_bwd = units["pixel/model"]
    assert base["necessary_step_s"] == pytest.approx(fwd_bwd)
    f_fwd, f_fb = units["pixel/f/equi"]
    assert equi["f_step_s"] == pytest.approx(2 * f_fb)
    # latent DPS also decodes once per step (with autograd)
    lat = speed.bench_one(models, "latent", "dps", "none", y, op, steps, 1, units, 0.1, memory=False)
    assert lat["calls"]["model"] == (steps, 0) and lat["calls"]["decoder"] == (steps, 0)
    assert lat["necessary_step_s"] == pytest.approx(units["latent/model"][1] + units["latent/decoder"][1])
    for r in (base, equi, lat):
        assert math.isfinite(r["step_s"]) and r["step_s"] > 0


@pytest.mark.skipif(sys.platform != "linux", reason="CPU peak memory uses fork and /proc")
def test_peak_memory_sees_a_large_allocation():
    n_bytes = 64 * 2**20

    def run():
        t = torch.ones(n_bytes // 4)
        assert float(t[-1]) == 1.0

    peak = speed.peak_memory(run, torch.device("cpu"))
    assert isinstance(peak, int)
    assert 0.9 * n_bytes <= peak <= 4 * n_bytes


def test_cli_quick_runs_and_reports_targets(tmp_path, capsys):
    results: dict = {}
    rc = speed.main(["--quick", "--steps", "2", "--priors", "pixel", "latent", "--no-memory",
                     "--out", str(tmp_path)], results)
    assert rc == 0
    rows = results["rows"]
    assert {(r["prior"], r["solver"], r["variant"]) for r in rows} == {
        (p, s, v) for p in ("pixel", "latent") for s in ("dps", "psld") for v in ("none", "equi")}
    for r in rows:
        assert math.isfinite(r["step_s"]) and r["necessary_step_s"] > 0
        assert math.isfinite(r["overhead"])
    text = (tmp_path / "bench_speed.md").read_text()
    assert "Targets: solver overhead" in text and "| latent | psld | equi |" in text


def test_cli_rejects_unknown_solver():
    with pytest.raises(ValueError, match="valid solvers"):
        speed.main(["--solvers", "ddnm"])
