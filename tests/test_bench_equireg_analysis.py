"""bench.equireg_analysis: the alpha sweep and trajectory probes on tiny random models, and the CLI's
--quick mode on the trained weights (validation images only)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from bench_models import one_torch_thread, tiny_models  # noqa: F401 - autouse fixture

from bench import equireg_analysis as analysis
from bench import tasks
from samplers.models.fashion import LATENT_PRIOR_FILE, PIXEL_PRIOR_FILE


def test_probe_ratio_scales_with_f_and_matches_autograd():
    models = tiny_models()
    prior = models.priors["pixel"]
    op = tasks.get_task("sr4").build()
    x0 = torch.rand(3, 1, 32, 32) * 2 - 1
    y = tasks.measure(op, x0.flip(-1), seed=1)
    reg = tasks.make_equireg("equicon", prior, models, 1.0)
    probe = analysis.TrajectoryProbe(reg, prior, op, y)
    probe({"denoised": x0, "sigma": torch.tensor(1.0)})
    # the same numbers computed here by hand
    leaf = x0.clone().requires_grad_(True)
    (g_pen,) = torch.autograd.grad(reg.equivariance_error(leaf, element=reg.group.sample_from[0]).sum(), leaf)
    leaf = x0.clone().requires_grad_(True)
    (g_data,) = torch.autograd.grad((op(leaf) - y).flatten(1).norm(dim=1).sum(), leaf)
    ratio = (g_pen.flatten(1).norm(dim=1) / g_data.flatten(1).norm(dim=1)).median()
    assert probe.records["grad_ratio"][0] == pytest.approx(float(ratio), rel=1e-5)
    assert probe.records["sigma"] == [1.0]
    pen = reg.equivariance_error(x0, element=reg.group.sample_from[0])
    assert probe.records["penalty"][0] == pytest.approx(float(pen.median()), rel=1e-5)
    assert probe.records["relative"][0] == pytest.approx(float((pen / x0.flatten(1).norm(dim=1)).median()),
                                                         rel=1e-5)


def test_run_analysis_sweep_and_report(tmp_path):
    models = tiny_models()
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    res = analysis.run_analysis(models, images, ["sr4"], ["dps", "psld"], ["equi", "equicon"], [0.0, 0.5], 3)
    assert len(res["runs"]) == 2 * 2 * 2
    for r in res["runs"]:
        assert len(r["trajectory"]["penalty"]) == 3 and len(r["trajectory"]["grad_ratio"]) == 3
        assert all(math.isfinite(v) for vals in r["values"].values() for v in vals)
    # alpha = 0 is the solver without EquiReg: the same reconstruction for both variants
    base = [r for r in res["runs"] if r["solver"] == "dps" and r["alpha"] == 0.0]
    assert base[0]["values"] == base[1]["values"]
    # and alpha > 0 changes it
    reg = next(r for r in res["runs"] if (r["solver"], r["variant"], r["alpha"]) == ("dps", "equicon", 0.5))
    assert reg["values"]["psnr"] != base[0]["values"]["psnr"]
    assert set(res["clean_penalty"]) == {"pixel/equi", "pixel/equicon", "latent/equi", "latent/equicon"}
    meta = {"command": "test", "images": 2, "seed": 0, "alphas": [0.0, 0.5], "steps": 3, "device": "cpu",
            "threads": 1, "wall_s": 1.0}
    md = analysis.markdown(res, meta)
    assert "| sr4 | dps | equicon |" in md and "α=0.5" in md and "VALIDATION" in md
    paths = analysis.plot(res, meta, tmp_path)
    assert [p.name for p in paths] == ["equireg_alpha_sweep.png", "equireg_trajectories.png"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_cli_rejects_bad_options():
    with pytest.raises(SystemExit):
        analysis.main(["--variants", "none"])  # alpha = 0 is the "none" run already
    with pytest.raises(SystemExit):
        analysis.main(["--alphas", "-1"])
    with pytest.raises(SystemExit):
        analysis.main(["--solvers", "ddrm"])


@pytest.mark.skipif(not (PIXEL_PRIOR_FILE.is_file() and LATENT_PRIOR_FILE.is_file()),
                    reason="trained pixel/latent priors not present yet (weights/)")
def test_cli_quick_on_validation_images(tmp_path):
    assert analysis.main(["--quick", "--images", "2", "--steps", "2", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "equireg_analysis.json").read_text())
    assert len(data["runs"]) == 2 * 2  # solvers x alphas
    assert "VALIDATION images" in (tmp_path / "equireg_analysis.md").read_text()
    assert (tmp_path / "equireg_trajectories.png").stat().st_size > 0
