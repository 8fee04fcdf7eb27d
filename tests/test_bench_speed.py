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


class _CountingNet(torch.nn.Module):
    """A network that counts its forward passes and the backward passes through its output."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.forwards = 0
        self.backwards = 0

    def forward(self, *args, **kwargs):
        self.forwards += 1
        out = self.net(*args, **kwargs)
        if out.requires_grad:
            out.register_hook(self._count_backward)
        return out

    def _count_backward(self, grad):
        self.backwards += 1


@pytest.mark.parametrize("solver", ["dps", "sitcom", "daps"])
def test_replay_redoes_exactly_the_recorded_network_work(solver):
    models = tiny_models()
    prior = models.priors["latent"]
    net = _CountingNet(prior.model)
    models.priors["latent"] = tasks.Prior("latent", net, prior.shape, prior.decode, prior.encode,
                                          sigma_max=prior.sigma_max)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    op = tasks.get_task("sr4").build()
    y = tasks.measure(op, x, 1)
    run, counters = speed._instrumented(models, "latent", solver, "equi", y, op, 2, 0.1)
    counters["model"].record = True
    run()
    in_run = (net.forwards, net.backwards)
    calls = counters["model"].calls
    assert len(calls) == counters["model"].grad + counters["model"].nograd > 0
    assert in_run[1] == counters["model"].grad  # every call with autograd was differentiated once
    net.forwards = net.backwards = 0
    speed.replay(net, calls)
    assert (net.forwards, net.backwards) == in_run
    # the recorded inputs are copies: the replay sees what the solver passed, not later values
    assert all(not args[0].requires_grad for _, args, _ in calls)


def test_bench_solver_counts_follow_the_solver_definitions():
    models = tiny_models()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    op = tasks.get_task("sr4").build()
    y = tasks.measure(op, x, 1)
    steps = 3
    # DPS: one differentiated denoiser call per step; Equi evaluates f on every step
    base, equi = speed.bench_solver(models, "pixel", "dps", ["none", "equi"], y, op, steps, 2, 0.1,
                                    memory=False)
    assert (base["variant"], equi["variant"]) == ("none", "equi")
    assert base["calls"] == {"model": (steps, 0)}
    assert equi["calls"]["model"] == (steps, 0) and equi["calls"]["f"][1] == 0
    assert equi["calls"]["f"][0] in (steps, 2 * steps)
    assert base["f_step_s"] == 0.0 and equi["f_step_s"] > 0
    assert "equireg_excess" in equi and "equireg_excess" not in base
    # the same denoiser work with and without EquiReg: one necessary time, the fastest replay of both
    assert base["necessary_shared_with"] == ["equi"] and equi["necessary_shared_with"] == ["none"]
    fastest = min(base["times_s"]["net"] + equi["times_s"]["net"])
    assert base["necessary_step_s"] == equi["necessary_step_s"] == fastest / steps
    assert equi["vs_base"] > 0
    # latent DPS also decodes once per step (with autograd); the encoder is never called
    (lat,) = speed.bench_solver(models, "latent", "dps", ["none"], y, op, steps, 1, 0.1, memory=False)
    assert lat["calls"] == {"model": (steps, 0), "decoder": (steps, 0), "encoder": (0, 0)}
    for r in (base, equi, lat):
        assert math.isfinite(r["step_s"]) and r["step_s"] > 0 and r["necessary_step_s"] > 0
        assert math.isfinite(r["overhead"]) and r["overhead"] > -1


@pytest.mark.parametrize("solver", ["dps", "daps"])
def test_trivial_variant_times_the_equi_penalty_without_changing_the_samples(solver):
    # The diagnostic row's f costs ~nothing and its difference is exactly zero: the penalty runs
    # (f is called, through autograd) but the samples are bit-identical to the base run's.
    models = tiny_models()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    op = tasks.get_task("sr4").build()
    y = tasks.measure(op, x, 1)
    prior = models.priors["pixel"]
    reg = speed.speed_equireg("trivial", prior, models, 0.1)
    assert isinstance(reg.f, speed.TrivialMPE) and reg.form == "equi" and reg.alpha == 0.1
    opts = {"langevin_steps": 3} if solver == "daps" else {}
    base = tasks.run_solver_on(solver, prior, op, y, 3, None, seed=0, options=opts)
    calls = speed.Counted(reg.f)
    reg.f = calls
    trivial = tasks.run_solver_on(solver, prior, op, y, 3, reg, seed=0, options=opts)
    assert calls.grad > 0 and calls.nograd == 0
    assert torch.equal(base, trivial)
    # the other variants are bench.quality's
    assert speed.speed_equireg("none", prior, models, 0.1) is None
    assert speed.speed_equireg("equi", prior, models, 0.1).f is models.mpe
    with pytest.raises(ValueError, match="valid variants"):
        speed.main(["--quick", "--variants", "none", "identity"])


def test_cli_times_the_trivial_variant(tmp_path):
    results: dict = {}
    rc = speed.main(["--quick", "--steps", "2", "--solvers", "dps", "--priors", "pixel", "--variants",
                     "none", "equi", "trivial", "--no-memory"], results)
    assert rc == 0
    rows = {r["variant"]: r for r in results["rows"]}
    assert set(rows) == {"none", "equi", "trivial"}
    assert rows["trivial"]["calls"]["f"][0] > 0 and math.isfinite(rows["trivial"]["equireg_excess"])
    assert "pixel/f/trivial" in results["units"]


def test_network_work_compares_grad_mode_and_shapes_not_values():
    def recorded(*calls):
        c = speed.Counted(lambda t, s: t * s)
        c.record = True
        for shape, with_grad, sigma in calls:
            t = torch.randn(shape, requires_grad=with_grad)
            c(t, torch.tensor(sigma))
        return {"model": c}

    a = recorded(((2, 3), True, 1.0), ((2, 3), False, 0.5))
    assert speed.network_work(a) == speed.network_work(recorded(((2, 3), True, 7.0), ((2, 3), False, 2.0)))
    assert speed.network_work(a) != speed.network_work(recorded(((2, 3), False, 1.0), ((2, 3), False, 0.5)))
    assert speed.network_work(a) != speed.network_work(recorded(((4, 3), True, 1.0), ((2, 3), False, 0.5)))
    assert speed.network_work(a) != speed.network_work(recorded(((2, 3), True, 1.0)))
    # f's calls are EquiReg's own cost, never part of the necessary network work
    with_f = dict(a, f=speed.Counted(torch.nn.Identity()))
    with_f["f"].record = True
    with_f["f"](torch.randn(2, 3))
    assert speed.network_work(with_f) == speed.network_work(a)


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


def test_keep_freed_cpu_memory_reports_what_it_did():
    note = tasks.keep_freed_cpu_memory("cpu")
    if sys.platform.startswith("linux"):
        assert note.startswith("malloc: glibc keeps freed memory") or "unchanged" in note
    else:
        assert "unchanged" in note
    assert tasks.keep_freed_cpu_memory("meta") == "malloc: unchanged (not a CPU run)"


def test_langevin_iteration_is_daps_update_with_the_closed_form_data_gradient():
    # The probe's solver work must be DAPS's: v*keep + pull - lr * grad ||Av - y||^2 / tau^2 + noise.
    op = tasks.get_task("sr4").build()
    x0 = torch.rand(2, 1, 32, 32) * 2 - 1
    y = tasks.measure(op, x0, 1)
    v = torch.rand(2, 1, 32, 32) * 2 - 1
    tau, lr, r2 = 0.05, 1e-3, 2.0
    out = speed._langevin_iteration(op, y, x0, torch.Generator().manual_seed(3), tau, lr, r2)(v.clone())
    leaf = v.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((op(leaf) - y).pow(2).sum() / tau**2, leaf)
    noise = torch.randn(v.shape, generator=torch.Generator().manual_seed(3))
    expected = v * (1 - lr / r2) + x0 * (lr / r2) - lr * grad + math.sqrt(2 * lr) * noise
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_interference_probe_times_every_part_and_sums_the_excess():
    models = tiny_models()
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    op = tasks.get_task("sr4").build()
    y = tasks.measure(op, images, 1)
    rows = speed.interference_probe(models, images, y, op, ("equi", "trivial"), iterations=3, rounds=2)
    assert [r["variant"] for r in rows] == ["equi", "trivial"]
    for r in rows:
        for key in ("ops_alone_s", "ops_between_s", "penalty_alone_s", "penalty_between_s", "f_replay_s"):
            assert r[key] > 0, key
        assert len(r["times_s"][f"{r['variant']}/both"]) == 2
        assert r["ops_slowdown_s"] == pytest.approx(r["ops_between_s"] - r["ops_alone_s"])
        assert r["excess_s"] == pytest.approx(r["ops_between_s"] + r["penalty_between_s"] - r["ops_alone_s"]
                                              - r["f_replay_s"])
    with pytest.raises(ValueError, match="must have a penalty"):
        speed.interference_probe(models, images, y, op, ("none",), iterations=1, rounds=1)
    with pytest.raises(ValueError, match="must be >= 1"):
        speed.interference_probe(models, images, y, op, ("equi",), iterations=0, rounds=1)


def test_cli_interference_writes_its_table_and_rejects_options_that_do_not_apply(tmp_path):
    results: dict = {}
    assert speed.main(["--interference", "--quick", "--out", str(tmp_path)], results) == 0
    assert [r["variant"] for r in results["interference"]] == ["equi", "trivial"]
    assert results["interference"][0]["iterations"] == 5
    text = (tmp_path / "bench_speed_interference.md").read_text()
    assert "| equi |" in text and "| trivial |" in text and "f replay" in text
    for extra in (["--solvers", "dps"], ["--steps", "3"], ["--no-memory"]):
        with pytest.raises(SystemExit):
            speed.main(["--interference", "--quick", *extra])
    with pytest.raises(SystemExit):
        speed.main(["--quick", "--iterations", "5"])
    with pytest.raises(ValueError, match="'none' has none"):
        speed.main(["--interference", "--quick", "--variants", "none", "equi"])
