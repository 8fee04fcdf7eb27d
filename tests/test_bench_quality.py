"""bench.quality / bench.tasks: task scaling, statistics, and a tiny end-to-end run with small random
models (so it runs before and independently of the trained weights), plus the CLI's --quick mode when
the trained weights are present."""

from __future__ import annotations

import json
import math

import pytest
import torch
from bench_models import one_torch_thread, tiny_models  # noqa: F401 - autouse fixture

from bench import quality, tasks
from samplers.models.fashion import LATENT_PRIOR_FILE, PIXEL_PRIOR_FILE


def test_scaled_odd_kernel_is_nearest_odd():
    assert tasks.scaled_odd_kernel(61) == 7  # 61 / 8 = 7.6 -> nearest odd is 7
    assert tasks.scaled_odd_kernel(61, 0.25) == 15  # 15.25
    assert tasks.scaled_odd_kernel(9, 1 / 8) == 3  # floor at 3
    for size in (5, 31, 61, 121):
        k = tasks.scaled_odd_kernel(size)
        assert k % 2 == 1
        assert abs(k - size * tasks.SCALE) <= 1.0 or k == 3
    with pytest.raises(ValueError, match="size"):
        tasks.scaled_odd_kernel(0)


def test_tasks_build_and_scale():
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    shapes = {name: spec.build()(x).shape for name, spec in tasks.TASKS.items()}
    assert shapes["sr4"] == (2, 1, 8, 8)
    blur = tasks.TASKS["gaussian_deblur"].build()
    assert blur.kernel_size == 7 and blur.sigma == pytest.approx(3.0 * 32 / 256)
    mask = tasks.TASKS["box_inpaint"].build()(torch.ones(1, 1, 32, 32))
    assert int((mask == 0).sum()) == 16 * 16  # half the side, as 128 of 256
    rand = tasks.TASKS["random_inpaint"].build()(torch.ones(1, 1, 32, 32))
    assert abs(float((rand == 0).float().mean()) - 0.7) < 0.05
    with pytest.raises(ValueError, match="valid tasks"):
        tasks.get_task("denoise")


def test_measurement_is_seeded_and_has_sigma_y_noise():
    op = tasks.TASKS["sr4"].build()
    x = torch.zeros(64, 1, 32, 32)
    y1, y2 = tasks.measure(op, x, 3), tasks.measure(op, x, 3)
    assert torch.equal(y1, y2)
    assert not torch.equal(y1, tasks.measure(op, x, 4))
    assert float(y1.std()) == pytest.approx(tasks.SIGMA_Y, rel=0.1)


def test_karras_sigmas():
    s = tasks.karras_sigmas(5, 0.002, 80.0)
    assert s.shape == (6,) and float(s[-1]) == 0.0
    assert float(s[0]) == pytest.approx(80.0) and float(s[-2]) == pytest.approx(0.002)
    assert bool((s[:-1] > s[1:]).all())
    with pytest.raises(ValueError, match="steps"):
        tasks.karras_sigmas(0)


def test_mean_ci95_matches_t_interval():
    from scipy.stats import t

    v = [1.0, 2.0, 4.0, 7.0]
    m, h = tasks.mean_ci95(v)
    sd = torch.tensor(v, dtype=torch.float64).std().item()
    assert m == pytest.approx(3.5)
    assert h == pytest.approx(t.ppf(0.975, 3) * sd / 2.0)
    assert tasks.mean_ci95([2.0]) == (2.0, 0.0)


def test_check_names_rejects_unknown_and_duplicates():
    with pytest.raises(ValueError, match="valid solvers"):
        tasks.check_names(["dps", "ddrm"], tasks.SOLVER_NAMES, "solvers")
    with pytest.raises(ValueError, match="duplicate"):
        tasks.check_names(["dps", "dps"], tasks.SOLVER_NAMES, "solvers")


def test_make_equireg_variants():
    models = tiny_models()
    z = torch.randn(2, 4, 8, 8)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert tasks.make_equireg("none", models.priors["pixel"], models, 0.1) is None
    for prior, inp in (("pixel", x), ("latent", z)):
        for variant in ("equi", "equicon"):
            reg = tasks.make_equireg(variant, models.priors[prior], models, 0.1)
            assert reg.form == variant
            val = reg(inp, 0, 10)
            assert val.shape == (2,) and bool(torch.isfinite(val).all()) and bool((val > 0).all())
    with pytest.raises(ValueError, match="valid variants"):
        tasks.make_equireg("equimax", models.priors["pixel"], models, 0.1)


def test_run_quality_end_to_end(tmp_path):
    models = tiny_models()
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    res = quality.run_quality(models, images, ["sr4"], ["dps", "psld"], ["none", "equi"], [2, 3], alpha=0.1)
    assert len(res["runs"]) == 1 * 2 * 2 * 2
    for r in res["runs"]:
        for name in ("psnr", "ssim", "residual"):
            assert len(r["values"][name]) == 2
            assert all(math.isfinite(v) for v in r["values"][name])
    # same images, seeds and x_T: a re-run gives the same numbers
    again = quality.run_quality(models, images, ["sr4"], ["dps"], ["none"], [2], alpha=0.1)
    first = next(r for r in res["runs"] if (r["solver"], r["variant"], r["steps"]) == ("dps", "none", 2))
    assert again["runs"][0]["values"] == first["values"]
    meta = {"command": "test", "images": 2, "seed": 0, "alpha": 0.1, "wall_s": 1.0, "device": "cpu",
            "threads": 1, "lpips_note": "skipped"}
    paths = quality.write_outputs(res, meta, tmp_path)
    for p in paths:
        assert p.is_file() and p.stat().st_size > 0
    assert {p.name for p in paths} >= {"bench_quality.md", "bench_quality_sr4.png", "bench_quality_grid.png"}
    md = (tmp_path / "bench_quality.md").read_text()
    assert "| dps | pixel | equi |" in md and "## sr4" in md
    data = json.loads((tmp_path / "bench_quality.json").read_text())
    assert len(data["runs"]) == 8
    # each run records the per-task options it was given (DPS's reference step size for SR x4)
    assert {json.dumps(r["solver_options"]) for r in data["runs"] if r["solver"] == "dps"} == {
        json.dumps({"step_size": tasks.TASKS["sr4"].dps_step_size})}
    # two step counts: the against-steps section pairs each image with its own baseline run
    assert "## EquiReg minus none against steps" in md
    pick = {(r["solver"], r["variant"], r["steps"]): r["values"]["psnr"] for r in res["runs"]}
    row = next(line for line in md.splitlines() if line.startswith("| sr4 | psld | equi − none |"))
    for n_steps, cell in zip([2, 3], row.strip("|").split("|")[3:], strict=True):
        with_reg, without = pick["psld", "equi", n_steps], pick["psld", "none", n_steps]
        mean, half = tasks.mean_ci95([a - b for a, b in zip(with_reg, without, strict=True)])
        assert cell.strip().startswith(f"{mean:+.3f} ± {half:.3f}")
    base = next(line for line in md.splitlines() if line.startswith("| sr4 | dps | none (PSNR) |"))
    assert base.split("|")[4].strip() == f"{tasks.mean_ci95(pick['dps', 'none', 2])[0]:.2f}"


def test_a_runs_numbers_do_not_depend_on_how_the_grid_is_split_over_processes():
    # parts of the grid are run one task (or variant, or step count) per process and combined, and
    # the README's single full command must give the same numbers
    models = tiny_models()
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    full = quality.run_quality(models, images, ["sr4", "box_inpaint"], ["dps"], ["none", "equi"], [2, 3],
                               alpha=0.1)
    values = {(r["task"], r["variant"], r["steps"]): r["values"] for r in full["runs"]}
    for part in (quality.run_quality(models, images, ["box_inpaint"], ["dps"], ["equi"], [3], alpha=0.1),
                 quality.run_quality(models, images, ["box_inpaint", "sr4"], ["dps"], ["none"], [2],
                                     alpha=0.1)):
        for r in part["runs"]:
            assert r["values"] == values[r["task"], r["variant"], r["steps"]], (r["task"], r["variant"])
    assert tasks.measurement_seed(0) == 1000  # the seed every one-task part in docs/ used


def test_cli_rejects_unknown_names(capsys):
    for argv in (["--solvers", "ddrm"], ["--combine", "part", "--solvers", "ddrm"]):
        with pytest.raises(SystemExit) as exc:
            quality.main(argv)
        assert exc.value.code == 2 and "valid solvers: dps, psld" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--steps", "25", "25"])
    assert "--steps must be distinct" in capsys.readouterr().err


@pytest.mark.skipif(not (PIXEL_PRIOR_FILE.is_file() and LATENT_PRIOR_FILE.is_file()),
                    reason="trained pixel/latent priors not present yet (weights/)")
def test_cli_quick_with_trained_weights(tmp_path):
    rc = quality.main(["--quick", "--images", "2", "--steps", "3", "--no-lpips", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "bench_quality.json").read_text())
    assert len(data["runs"]) == 2 * 2 * 2
    for r in data["runs"]:
        assert all(math.isfinite(v) for vals in r["values"].values() for v in vals)
    assert (tmp_path / "bench_quality_grid.png").is_file()
    assert (tmp_path / "bench_quality_box_inpaint.png").is_file()


def test_stlpips_loader_leaves_no_stand_in_modules():
    import sys

    before = {name: sys.modules.get(name) for name in ("IPython", "torchsummary")}
    try:
        quality.load_stlpips()
    except ImportError as err:
        assert "stlpips-pytorch could not be imported" in str(err)
    for name, module in before.items():
        if module is None:
            assert sys.modules.get(name) is None or hasattr(sys.modules[name], "__file__")


@pytest.mark.skipif(not PIXEL_PRIOR_FILE.is_file(), reason="trained pixel prior not present yet (weights/)")
def test_cli_pixel_solvers_with_trained_weights(tmp_path):
    rc = quality.main(["--quick", "--solvers", "dps", "--variants", "none", "equi", "equicon",
                       "--images", "2", "--steps", "2", "3", "--no-lpips", "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "bench_quality.json").read_text())
    assert len(data["runs"]) == 2 * 3 * 2  # tasks x variants x steps
    for r in data["runs"]:
        assert all(math.isfinite(v) for vals in r["values"].values() for v in vals)
    for name in ("bench_quality.md", "bench_quality_sr4.png", "bench_quality_grid.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_combine_merges_parts_and_rejects_mismatches(tmp_path):
    models = tiny_models()
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    meta = {"command": "part", "images": 2, "seed": 0, "alpha": 0.1, "steps": [2], "wall_s": 1.0,
            "device": "cpu", "threads": 1, "lpips_note": "skipped", "solvers": ["dps"],
            "variants": ["none", "equi"]}
    for task in ("sr4", "box_inpaint"):
        res = quality.run_quality(models, images, [task], ["dps"], ["none", "equi"], [2], alpha=0.1)
        quality.write_outputs(res, {**meta, "tasks": [task]}, tmp_path / task)
    results, merged = quality.combine([tmp_path / "sr4", tmp_path / "box_inpaint"])
    assert len(results["runs"]) == 4 and merged["tasks"] == ["sr4", "box_inpaint"]
    # rows come in bench.tasks' order (tasks, then solvers, variants, steps), not the parts' order
    results, merged = quality.combine([tmp_path / "box_inpaint", tmp_path / "sr4"])
    assert [(r["task"], r["variant"]) for r in results["runs"]] == [
        ("sr4", "none"), ("sr4", "equi"), ("box_inpaint", "none"), ("box_inpaint", "equi")]
    assert merged["tasks"] == ["sr4", "box_inpaint"]
    assert merged["wall_s"] == 2.0 and merged["parts"] == 2
    assert set(results["samples"]) == {"sr4", "box_inpaint"}
    assert set(results["samples"]["sr4"]) == {"ground truth", "dps none, 2 steps", "dps equi, 2 steps"}
    paths = quality.write_outputs(results, merged, tmp_path / "all")
    md = (tmp_path / "all" / "bench_quality.md").read_text()
    assert "summed over 2 processes" in md and "## box_inpaint" in md and "## sr4" in md
    assert "paired PSNR difference" in md and "| dps | equi |" in md
    assert all(p.stat().st_size > 0 for p in paths)
    # re-combining a combined folder (to re-render it) keeps the process count and wall time
    _, again = quality.combine([tmp_path / "all"])
    assert again["parts"] == 2 and again["wall_s"] == 2.0
    # parts may differ in steps (a longer run for one task): steps are the union, and the summary
    # tables use the largest step count every task ran
    res = quality.run_quality(models, images, ["sr4"], ["dps"], ["none", "equi"], [3], alpha=0.1)
    quality.write_outputs(res, {**meta, "steps": [3], "tasks": ["sr4"]}, tmp_path / "sr4_3")
    results, merged = quality.combine([tmp_path / "all", tmp_path / "sr4_3"])
    assert merged["steps"] == [2, 3] and len(results["runs"]) == 6
    md = quality.markdown(results, merged)
    assert "## PSNR (dB) at 2 steps" in md and "paired PSNR difference (dB) at 2 steps" in md
    assert "| sr4 | dps | none (PSNR) |" in md and "| box_inpaint | dps | equi − none |" in md
    assert merged["threads"] == 1 and "(1 thread(s) each)" in md
    # a part run with --threads 2 (a long run on both cores) may join; the report names both counts,
    # and re-combining the combined folder keeps them
    res = quality.run_quality(models, images, ["sr4"], ["dps"], ["none", "equi"], [4], alpha=0.1)
    quality.write_outputs(res, {**meta, "steps": [4], "tasks": ["sr4"], "threads": 2,
                                "command": "part --threads 2"}, tmp_path / "sr4_4")
    results, merged = quality.combine([tmp_path / "all", tmp_path / "sr4_4"])
    assert merged["threads"] == [1, 2]
    quality.write_outputs(results, merged, tmp_path / "mixed")
    md = (tmp_path / "mixed" / "bench_quality.md").read_text()
    assert "(1 or 2 threads per process: `--threads` in a part's command, 1 without)" in md
    assert quality.combine([tmp_path / "mixed", tmp_path / "sr4_3"])[1]["threads"] == [1, 2]
    # the same part twice: a duplicated run
    with pytest.raises(ValueError, match="more than one part"):
        quality.combine([tmp_path / "sr4", tmp_path / "sr4"])
    # different settings cannot be combined
    js = tmp_path / "box_inpaint" / "bench_quality.json"
    data = json.loads(js.read_text())
    data["meta"]["alpha"] = 1.0
    js.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="differ in 'alpha'"):
        quality.combine([tmp_path / "sr4", tmp_path / "box_inpaint"])
    assert quality.main(["--combine", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2


def test_combine_selects_runs_and_keeps_the_grid_at_their_steps(tmp_path, capsys):
    models = tiny_models()
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    meta = {"command": "part", "images": 2, "seed": 0, "alpha": 0.1, "wall_s": 1.0, "device": "cpu",
            "threads": 1, "lpips_note": "skipped", "solvers": ["dps"], "variants": ["none", "equi"]}
    res = quality.run_quality(models, images, ["sr4"], ["dps"], ["none", "equi"], [2, 3], alpha=0.1)
    # the grid holds each process's largest step count, named with it
    assert set(res["samples"]["sr4"]) == {"ground truth", "dps none, 3 steps", "dps equi, 3 steps"}
    quality.write_outputs(res, {**meta, "steps": [2, 3], "tasks": ["sr4"]}, tmp_path / "a")
    longer = quality.run_quality(models, images, ["sr4"], ["dps"], ["none", "equi"], [4], alpha=0.1)
    quality.write_outputs(longer, {**meta, "steps": [4], "tasks": ["sr4"]}, tmp_path / "b")
    # whatever the order of the parts, the grid shows the largest step count
    for order in (["a", "b"], ["b", "a"]):
        results, merged = quality.combine([tmp_path / p for p in order])
        # the grid's columns keep the runs' order, not the samples file's sorted keys
        assert list(results["samples"]["sr4"]) == ["ground truth", "dps none, 4 steps", "dps equi, 4 steps"]
        assert torch.equal(results["samples"]["sr4"]["dps equi, 4 steps"],
                           longer["samples"]["sr4"]["dps equi, 4 steps"].half().float())
        assert merged["steps"] == [2, 3, 4] and "selection" not in merged
    # selecting steps keeps only those runs, and the grid only samples of kept runs
    results, merged = quality.combine([tmp_path / "a", tmp_path / "b"], steps=[2, 3], variants=["equi"])
    assert {(r["variant"], r["steps"]) for r in results["runs"]} == {("equi", 2), ("equi", 3)}
    assert set(results["samples"]["sr4"]) == {"ground truth", "dps equi, 3 steps"}
    assert merged["steps"] == [2, 3] and merged["variants"] == ["equi"] and merged["parts"] == 2
    assert merged["selection"] == "--variants equi --steps 2 3"
    md = quality.markdown(results, merged)
    assert "--combine … --variants equi --steps 2 3" in md and "## PSNR (dB) at 3 steps" in md
    # a combined part's own selection applied to its runs only: combining it again must not report
    # it as a selection of the new report (which here also shows 4-step runs)
    quality.write_outputs(results, merged, tmp_path / "equi23")
    for chosen in (None, ["equi"]):
        again, remerged = quality.combine([tmp_path / "equi23", tmp_path / "b"], variants=chosen)
        assert {r["steps"] for r in again["runs"]} == {2, 3, 4}
        assert remerged["earlier_selections"] == ["--variants equi --steps 2 3"]
        md = quality.markdown(again, remerged)
        assert "(`--combine … --variants equi --steps 2 3`; each applied only to the runs of the part" in md
        if chosen is None:
            assert "selection" not in remerged and "Only the runs selected" not in md
        else:
            assert remerged["selection"] == "--variants equi"
            assert "Only the runs selected by `--combine … --variants equi` are shown." in md
    # a part written before the grid's columns named their step count holds its largest one
    from safetensors.torch import load_file, save_file

    st = tmp_path / "b" / quality.SAMPLES_FILE
    save_file({k.replace(", 4 steps", ""): v for k, v in load_file(str(st)).items()}, str(st))
    results, _ = quality.combine([tmp_path / "a", tmp_path / "b"], steps=[4])
    assert set(results["samples"]["sr4"]) == {"ground truth", "dps none, 4 steps", "dps equi, 4 steps"}
    # selecting what no part ran is an error, not an empty report
    with pytest.raises(ValueError, match="--steps 5 was not run by any part"):
        quality.combine([tmp_path / "a"], steps=[5])
    with pytest.raises(ValueError, match="--tasks box_inpaint was not run"):
        quality.combine([tmp_path / "a"], tasks=["box_inpaint"])
    # the CLI: selection options pass through; run options are refused, not ignored
    out = tmp_path / "sel"
    # a's samples file holds its 3-step images only, so a 2-step report has no grid to draw
    assert quality.main(["--combine", str(tmp_path / "a"), "--steps", "2", "--out", str(out)]) == 2
    assert "lacks the grid's image of sr4 'dps none, 2 steps'" in capsys.readouterr().err
    assert quality.main(["--combine", str(tmp_path / "a"), "--steps", "2", "--no-grid",
                         "--out", str(out)]) == 0
    assert {r["steps"] for r in json.loads((out / "bench_quality.json").read_text())["runs"]} == {2}
    for extra in (["--images", "4"], ["--alpha", "0.5"], ["--seed", "0"], ["--threads", "1"], ["--quick"],
                  ["--no-lpips"], ["--device", "cpu"], ["--default-malloc"]):
        with pytest.raises(SystemExit):
            quality.main(["--combine", str(tmp_path / "a"), *extra, "--out", str(out)])
        assert f"{extra[0]} cannot be used with --combine" in capsys.readouterr().err


def test_combine_without_the_grid_takes_parts_whose_samples_file_is_gone(tmp_path, capsys):
    models = tiny_models()
    images = torch.rand(2, 1, 32, 32) * 2 - 1
    meta = {"command": "part", "images": 2, "seed": 0, "alpha": 0.1, "wall_s": 1.0, "device": "cpu",
            "threads": 1, "lpips_note": "skipped", "solvers": ["dps"], "variants": ["none"], "tasks": ["sr4"]}
    for name, n in (("a", 2), ("b", 3)):
        res = quality.run_quality(models, images, ["sr4"], ["dps"], ["none"], [n], alpha=0.1)
        quality.write_outputs(res, {**meta, "steps": [n]}, tmp_path / name)
    (tmp_path / "a" / quality.SAMPLES_FILE).unlink()  # e.g. an earlier session's scratch is gone
    # the grid shows the 3-step run: only b's samples file is needed
    results, merged = quality.combine([tmp_path / "a", tmp_path / "b"])
    assert list(results["samples"]["sr4"]) == ["ground truth", "dps none, 3 steps"]
    assert "grid_note" not in merged and {r["steps"] for r in results["runs"]} == {2, 3}
    # a grid that needs the lost images is an error that names them and says how to go on
    with pytest.raises(FileNotFoundError, match=r"sr4 'dps none, 2 steps'.*--no-grid combines the tables"):
        quality.combine([tmp_path / "a", tmp_path / "b"], steps=[2])
    # a samples file holds each method's largest step count only: asking it for another is an error
    quality.write_outputs(results, merged, tmp_path / "ab")
    with pytest.raises(ValueError, match=r"lacks the grid's image of sr4 'dps none, 2 steps'.*--no-grid"):
        quality.combine([tmp_path / "ab"], steps=[2])
    assert quality.combine([tmp_path / "ab"], steps=[2], grid=False)[0]["samples"] is None
    from safetensors.torch import load_file, save_file

    damaged = tmp_path / "ab" / quality.SAMPLES_FILE
    kept = {k: v for k, v in load_file(str(damaged)).items() if not k.endswith("ground truth")}
    save_file(kept, str(damaged))
    with pytest.raises(ValueError, match="no samples file of task 'sr4' holds its ground truth"):
        quality.combine([tmp_path / "ab"])
    results, merged = quality.combine([tmp_path / "a", tmp_path / "b"], grid=False)
    assert results["samples"] is None and {r["steps"] for r in results["runs"]} == {2, 3}
    assert "--no-grid" in merged["grid_note"]
    # the output folder already holds an older grid and samples file (re-combining in place)
    out = tmp_path / "b"
    old_grid = (out / "bench_quality_grid.png").read_bytes()
    written = quality.write_outputs(results, merged, out)
    assert {p.name for p in written} == {"bench_quality.md", "bench_quality.json", "bench_quality_sr4.png"}
    assert (out / "bench_quality_grid.png").read_bytes() == old_grid  # not rewritten
    # the older samples file no longer matches the runs: removed, so no later grid silently lacks them
    assert not (out / quality.SAMPLES_FILE).exists()
    md = (out / "bench_quality.md").read_text()
    assert md.count("Image grid: not rewritten by this `--combine --no-grid`") == 1
    assert "| dps | none | 2 |" in md and "| dps | none | 3 |" in md
    # the note is set by each combine, not inherited: a re-combination says it once
    _, again = quality.combine([out], grid=False)
    assert quality.markdown(results, again).count("Image grid:") == 1
    with pytest.raises(FileNotFoundError, match="samples"):
        quality.combine([out])
    # the CLI
    assert quality.main(["--combine", str(tmp_path / "a"), "--no-grid", "--out", str(tmp_path / "c")]) == 0
    assert not (tmp_path / "c" / "bench_quality_grid.png").exists()
    assert quality.main(["--combine", str(tmp_path / "a"), "--out", str(tmp_path / "d")]) == 2
    assert "--no-grid" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--no-grid", "--quick", "--out", str(tmp_path / "e")])
    assert "--no-grid only applies to --combine" in capsys.readouterr().err


def _top_eigenvalue_of_normal_operator(op, shape, iters: int = 300) -> float:
    """lambda_max(A^T A) by power iteration (float64)."""
    v = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(iters):
        w = op.adjoint(op(v))
        v = w / w.norm()
    return float((op(v) ** 2).sum() / (v ** 2).sum())


def test_daps_uses_the_reference_lr_per_task_and_its_langevin_step_is_stable():
    from samplers.solvers.daps import DAPS

    expected = {"sr4": 1e-4, "gaussian_deblur": 1e-4, "motion_deblur": 5e-5, "box_inpaint": 5e-5,
                "random_inpaint": 1e-4, "phase_retrieval": 5e-5}  # DAPS's pixel task configs
    assert {t: tasks.solver_options_for("daps", t)["lr"] for t in tasks.TASKS} == expected
    tau, steps = DAPS.options["tau"], DAPS.options["langevin_steps"]

    def growth(lr, lam):  # the data step's gain on A^T A's top mode over one level's iterations
        return abs(1 - 2 * lr * lam / tau ** 2) ** steps

    for name, spec in tasks.TASKS.items():
        op = spec.build().double()
        if not op.linear:
            continue
        lam = _top_eigenvalue_of_normal_operator(op, (1, 1, 32, 32))
        assert growth(tasks.solver_options_for("daps", name)["lr"], lam) < 1.5, (name, lam)
        if name == "motion_deblur":
            # why motion deblurring needs the smaller step: the default lr blows up the top mode
            assert lam > 1.1 and growth(DAPS.options["lr"], lam) > 1e8


def test_every_solver_runs_on_every_task(monkeypatch):
    # a solver/task pair that cannot run (e.g. PSLD's gluing on a nonlinear operator) must fail here,
    # not an hour into the full grid; ReSample's optimisations are shortened, only to save time
    real = tasks.solver_options_for

    def shorter(solver, task):
        extra = {"pixel_iters": 5, "latent_iters": 5} if solver == "resample" else {}
        return {**real(solver, task), **extra}

    monkeypatch.setattr(quality, "solver_options_for", shorter)
    models = tiny_models()
    images = torch.rand(1, 1, 32, 32) * 2 - 1
    res = quality.run_quality(models, images, list(tasks.TASKS), list(tasks.SOLVER_NAMES), ["none"], [2])
    assert len(res["runs"]) == len(tasks.TASKS) * len(tasks.SOLVER_NAMES)
    for r in res["runs"]:
        assert all(math.isfinite(v) for vals in r["values"].values() for v in vals), r["task"]
