"""Reconstruction quality on held-out Fashion-MNIST test images: every solver x EquiReg variant x steps.

Usage::

    python -m bench.quality [--quick] [--tasks ...] [--solvers ...] [--variants ...]
                            [--steps 25 50 100 250] [--images 64] [--alpha 0.01] [--seed 0] [--out docs/]

For each task of :mod:`bench.tasks` the first ``--images`` held-out test images are measured once
(y = A x + 0.05 noise, seeded); every (solver, variant, steps) then starts from the same seeded x_T
of its prior and runs with the same solver seed. Metrics per image: PSNR and SSIM (data range 2 on
[-1, 1]), ST-LPIPS (AlexNet, shift-tolerant; lower is better; needs ``stlpips-pytorch``), and the
measurement residual RMS(A x_hat - y) (about sigma_y = 0.05 when x_hat explains y). Reported: mean
and 95% t-interval of the mean over images.

Outputs written to ``--out``: ``bench_quality.md`` (tables), ``bench_quality.json`` (per-image
values), ``bench_quality_<task>.png`` (metric vs steps) and ``bench_quality_grid.png`` (first images,
largest step count) with the images behind it (``bench_quality_samples.safetensors``, what ``--combine``
merges; ``--combine … --no-grid`` writes everything but the grid, for parts whose samples file is
gone). Nothing here is tuned on the test images: the solver options are the
references' defaults (DPS: the reference per-task step size), alpha is one fixed value.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.tasks import (
    SIGMA_Y,
    SOLVER_NAMES,
    SOLVER_PRIOR,
    TASKS,
    VARIANTS,
    Models,
    add_malloc_option,
    apply_malloc_option,
    check_names,
    get_task,
    load_models,
    make_equireg,
    mean_ci95,
    measure,
    measurement_seed,
    residual_rms,
    run_solver_on,
    solver_options_for,
)
from samplers.metrics import psnr, ssim

QUICK = {"tasks": ["sr4", "box_inpaint"], "solvers": ["dps", "psld"], "variants": ["none", "equi"],
         "steps": [10, 25], "images": 8}
METRICS = ("psnr", "ssim", "lpips", "residual")
METRIC_LABELS = {"psnr": "PSNR (dB) ↑", "ssim": "SSIM ↑", "lpips": "ST-LPIPS ↓", "residual": "residual RMS"}
SAMPLES_FILE = "bench_quality_samples.safetensors"
LPIPS_SIZE = 128  # images are upsampled (bilinear) to this size before ST-LPIPS; see load_stlpips


def load_stlpips(device: torch.device | str = "cpu") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """ST-LPIPS (AlexNet, shift-tolerant weights bundled in ``stlpips-pytorch``) as ``d(x, ref) -> (B,)``.

    Gray images are repeated to 3 channels and upsampled to 128 px: AlexNet's deeper layers have a
    receptive field far larger than 32 px (at 32 px they are 1x1). The package imports IPython and
    torchsummary only for debugging helpers; stand-in modules are inserted when those are absent.
    Raises ImportError (with the reason) when the package or its torchvision cannot be loaded.
    """
    stubs = []
    for name in ("IPython", "torchsummary"):
        if name not in sys.modules:
            try:
                __import__(name)
            except ImportError:
                stub = types.ModuleType(name)
                stub.embed = lambda *a, **k: None  # type: ignore[attr-defined]
                stub.summary = lambda *a, **k: None  # type: ignore[attr-defined]
                sys.modules[name] = stub
                stubs.append(name)
    try:
        from stlpips_pytorch import stlpips
    except Exception as err:  # ImportError, or torchvision failing to register its ops
        raise ImportError(f"stlpips-pytorch could not be imported ({type(err).__name__}: {err})") from err
    finally:
        # the stand-ins must not outlive the import: matplotlib.pyplot probes sys.modules["IPython"]
        for name in stubs:
            del sys.modules[name]
    net = stlpips.LPIPS(net="alex", variant="shift_tolerant", verbose=False).to(device).eval()
    net.requires_grad_(False)

    def distance(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        def prep(t: torch.Tensor) -> torch.Tensor:
            t = t.float()
            if t.shape[1] == 1:
                t = t.repeat(1, 3, 1, 1)
            return torch.nn.functional.interpolate(t, size=(LPIPS_SIZE, LPIPS_SIZE), mode="bilinear",
                                                   align_corners=False)

        with torch.no_grad():
            return net(prep(x), prep(ref)).flatten()

    return distance


def image_metrics(rec: torch.Tensor, ref: torch.Tensor, op: Any, y: torch.Tensor,
                  lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None
                  ) -> dict[str, list[float]]:
    """Per-image metrics of reconstructions ``rec`` against ``ref`` (both (B, C, H, W) in [-1, 1])."""
    out = {"psnr": psnr(rec, ref, 2.0).tolist(), "ssim": ssim(rec, ref, 2.0).tolist(),
           "residual": residual_rms(op, rec, y).tolist()}
    if lpips is not None:
        out["lpips"] = lpips(rec, ref).tolist()
    return out


def run_quality(models: Models, images: torch.Tensor, tasks: Sequence[str], solvers: Sequence[str],
                variants: Sequence[str], steps: Sequence[int], alpha: float = 0.01, seed: int = 0,
                lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every (task, solver, variant, steps); returns the per-image results and sample images.

    ``images``: (N, 1, 32, 32) ground truth in [-1, 1]. Every task is measured with noise seed
    :func:`bench.tasks.measurement_seed` (the same whatever else runs in the process); every run uses
    solver seed ``seed`` and the same x_T per prior, so a run's numbers do not depend on how the
    grid is split over processes.
    """
    runs: list[dict[str, Any]] = []
    samples: dict[str, dict[str, torch.Tensor]] = {}
    for task in tasks:
        op = get_task(task).build()
        y = measure(op, images, measurement_seed(seed), SIGMA_Y)
        samples[task] = {"ground truth": images[:4]}
        for n_steps in steps:
            for solver in solvers:
                prior = models.priors[SOLVER_PRIOR[solver]]
                for variant in variants:
                    equireg = make_equireg(variant, prior, models, alpha, seed=seed)
                    options = solver_options_for(solver, task)
                    t0 = time.perf_counter()
                    rec = run_solver_on(solver, prior, op, y, n_steps, equireg, seed, options)
                    seconds = time.perf_counter() - t0
                    vals = image_metrics(rec, images, op, y, lpips)
                    runs.append({"task": task, "solver": solver, "prior": prior.name, "variant": variant,
                                 "steps": n_steps, "seconds": seconds, "values": vals,
                                 # the per-task options passed to the solver (bench.tasks), for provenance
                                 "solver_options": dict(options)})
                    if n_steps == max(steps):
                        samples[task][sample_column(solver, variant, n_steps)] = rec[:4].detach().cpu()
                    if log is not None:
                        summary = ", ".join(f"{k} {mean_ci95(v)[0]:.3f}" for k, v in vals.items())
                        log(f"{task} {solver}/{variant} {n_steps} steps: {summary} ({seconds:.1f} s)")
    return {"runs": runs, "samples": samples}


def sample_column(solver: str, variant: str, steps: int) -> str:
    """The image grid's column name (also the key in the samples file) of one run."""
    return f"{solver} {variant}, {steps} steps"


_COLUMN = re.compile(r"^(?P<method>.+), (?P<steps>\d+) steps$")


def _cell(values: list[float] | None, digits: int) -> str:
    if not values:
        return "n/a"
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        return "non-finite"
    m, h = mean_ci95(finite)
    return f"{m:.{digits}f} ± {h:.{digits}f}"


def _parts_note(meta: dict[str, Any]) -> str:
    parts = meta.get("parts", 1)
    return f" summed over {parts} processes run side by side" if parts > 1 else ""


def _thread_counts(meta: dict[str, Any]) -> list[int]:
    """The torch thread counts of a run's processes (a combined report may hold several)."""
    threads = meta.get("threads", 1)
    return sorted(set(threads)) if isinstance(threads, list) else [threads]


def _threads_note(meta: dict[str, Any]) -> str:
    counts = _thread_counts(meta)
    if len(counts) == 1:
        return f"{counts[0]} thread(s) each"
    # which part ran with which count is in its command
    return (f"{', '.join(map(str, counts[:-1]))} or {counts[-1]} threads per process: `--threads` in a "
            "part's command, 1 without")


def _paired_psnr_gain(runs: list[dict[str, Any]], task: str, solver: str, variant: str,
                      steps: int) -> tuple[float, float] | None:
    """Mean and 95% half-width of the per-image PSNR of ``variant`` minus that of ``none``."""
    pick = {r["variant"]: r for r in runs if (r["task"], r["solver"], r["steps"]) == (task, solver, steps)}
    if variant not in pick or "none" not in pick:
        return None
    return mean_ci95([a - b for a, b in zip(pick[variant]["values"]["psnr"], pick["none"]["values"]["psnr"],
                                             strict=True)])


def _steps_section(runs: list[dict[str, Any]], tasks: list[str], variants: list[str]) -> list[str]:
    """With several step counts: the paired PSNR change of each EquiReg variant against steps, next to
    the baseline's PSNR (the paper's claim is that EquiReg helps most with few steps)."""
    steps = sorted({r["steps"] for r in runs})
    if len(steps) < 2 or not variants:
        return []
    lines = ["", "## EquiReg minus none against steps: paired PSNR difference (dB)", "",
             "Baseline rows give the mean PSNR without EquiReg; EquiReg rows the per-image paired "
             "difference to it (mean ± 95% half-width). A difference whose interval excludes 0 is marked *.",
             "", "| task | solver | EquiReg | " + " | ".join(f"{s} steps" for s in steps) + " |",
             "|---|---|---|" + "---|" * len(steps)]
    for task in tasks:
        for solver in dict.fromkeys(r["solver"] for r in runs if r["task"] == task):
            base = []
            for s in steps:
                match = [r for r in runs if (r["task"], r["solver"], r["variant"], r["steps"]) ==
                         (task, solver, "none", s)]
                base.append(f"{mean_ci95(match[0]['values']['psnr'])[0]:.2f}" if match else "–")
            if all(c == "–" for c in base):
                continue
            lines.append(f"| {task} | {solver} | none (PSNR) | " + " | ".join(base) + " |")
            for variant in variants:
                cells = []
                for s in steps:
                    gain = _paired_psnr_gain(runs, task, solver, variant, s)
                    if gain is None:
                        cells.append("–")
                    else:
                        m, h = gain
                        cells.append(f"{m:+.3f} ± {h:.3f}" + (" *" if abs(m) > h else ""))
                if any(c != "–" for c in cells):
                    lines.append(f"| {task} | {solver} | {variant} − none | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    """The Markdown report: settings, a PSNR summary at the largest step count, and full tables."""
    runs = results["runs"]
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    # the summary tables use the largest step count that every task ran (parts may differ in steps)
    per_task = [{r["steps"] for r in runs if r["task"] == task} for task in tasks]
    common = set.intersection(*per_task)
    steps_max = max(common) if common else max(r["steps"] for r in runs)
    methods = list(dict.fromkeys((r["solver"], r["prior"], r["variant"]) for r in runs))
    lines = ["# Reconstruction quality (Fashion-MNIST, 32x32)", "",
             f"Command: `{meta['command']}`; {meta['images']} held-out test images, seed {meta['seed']}, "
             f"sigma_y = {SIGMA_Y}, EquiReg alpha = {meta['alpha']} (hflip), wall time "
             f"{meta['wall_s']:.0f} s{_parts_note(meta)} on {meta['device']} "
             f"({_threads_note(meta)}).",
             "Cells: mean ± half-width of the 95% t-interval over images. "
             "PSNR/SSIM: higher is better; ST-LPIPS: lower is better; residual = RMS(A x̂ − y), "
             f"≈ {SIGMA_Y} when x̂ explains y.", ""]
    selected = []
    if meta.get("selection"):
        selected.append(f"Only the runs selected by `--combine … {meta['selection']}` are shown.")
    if meta.get("earlier_selections"):
        earlier = ", ".join(f"`--combine … {s}`" for s in meta["earlier_selections"])
        selected.append(f"Earlier combines that made some of the parts selected their runs ({earlier}; "
                        "each applied only to the runs of the part it made).")
    if selected:
        lines += [" ".join(selected) + " The wall time is that of the whole parts.", ""]
    if meta.get("lpips_note"):
        lines += [f"ST-LPIPS: {meta['lpips_note']}", ""]
    if meta.get("grid_note"):
        lines += [f"Image grid: {meta['grid_note']}", ""]
    lines += [f"## PSNR (dB) at {steps_max} steps", "",
              "| solver | prior | EquiReg | " + " | ".join(tasks) + " |",
              "|---|---|---|" + "---|" * len(tasks)]
    for solver, prior, variant in methods:
        cells = []
        for task in tasks:
            match = [r for r in runs if (r["task"], r["solver"], r["variant"], r["steps"]) ==
                     (task, solver, variant, steps_max)]
            cells.append(_cell(match[0]["values"]["psnr"], 2) if match else "–")
        lines.append(f"| {solver} | {prior} | {variant} | " + " | ".join(cells) + " |")
    variants = [v for v in dict.fromkeys(m[2] for m in methods) if v != "none"]
    if variants and any(m[2] == "none" for m in methods):
        lines += ["", f"## EquiReg minus none: paired PSNR difference (dB) at {steps_max} steps", "",
                  "Per image (same image, measurement, x_T and seed), then mean ± 95% half-width: an "
                  "interval that excludes 0 is a measured effect, however small.", "",
                  "| solver | EquiReg | " + " | ".join(tasks) + " |", "|---|---|" + "---|" * len(tasks)]
        for solver in dict.fromkeys(m[0] for m in methods):
            for variant in variants:
                cells = []
                for task in tasks:
                    gain = _paired_psnr_gain(runs, task, solver, variant, steps_max)
                    cells.append("–" if gain is None else f"{gain[0]:+.3f} ± {gain[1]:.3f}")
                if any(c != "–" for c in cells):
                    lines.append(f"| {solver} | {variant} | " + " | ".join(cells) + " |")
    lines += _steps_section(runs, tasks, variants)
    for task in tasks:
        lines += ["", f"## {task}: {TASKS[task].description}", "",
                  "| solver | EquiReg | steps | PSNR | SSIM | ST-LPIPS | residual | seconds |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in (r for r in runs if r["task"] == task):
            v = r["values"]
            lines.append(f"| {r['solver']} | {r['variant']} | {r['steps']} | {_cell(v['psnr'], 2)} | "
                         f"{_cell(v['ssim'], 3)} | {_cell(v.get('lpips'), 3)} | {_cell(v['residual'], 3)} "
                         f"| {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    """Metric-vs-steps figures per task and, unless ``results["samples"]`` is None (``--no-grid``), the
    image grid (PNG); returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    runs = results["runs"]
    for task in dict.fromkeys(r["task"] for r in runs):
        task_runs = [r for r in runs if r["task"] == task]
        metrics = [m for m in METRICS if all(m in r["values"] for r in task_runs)]
        fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
        for ax, metric in zip(axes[0], metrics, strict=True):
            for solver, variant in dict.fromkeys((r["solver"], r["variant"]) for r in task_runs):
                pts = sorted((r["steps"], *mean_ci95(r["values"][metric])) for r in task_runs
                             if (r["solver"], r["variant"]) == (solver, variant))
                xs, ms, hs = zip(*pts, strict=True)
                style = {"none": "-", "equi": "--", "equicon": ":"}[variant]
                ax.errorbar(xs, ms, yerr=hs, linestyle=style, marker="o", capsize=2,
                            label=f"{solver}/{variant}")
            ax.set_xscale("log")
            ticks = sorted({r["steps"] for r in task_runs})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("steps")
            ax.set_title(METRIC_LABELS[metric])
        axes[0][-1].legend(fontsize=7, loc="best")
        fig.suptitle(f"{task}: {TASKS[task].description}")
        fig.tight_layout()
        path = out / f"bench_quality_{task}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    samples = results["samples"]
    if samples is None:
        return written
    columns = list(dict.fromkeys(c for cols in samples.values() for c in cols))
    rows = [(task, i) for task in samples for i in range(samples[task]["ground truth"].shape[0])][: 4 * 6]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(1.3 * len(columns), 1.3 * len(rows)),
                             squeeze=False)
    for (task, i), ax_row in zip(rows, axes, strict=True):
        for col, ax in zip(columns, ax_row, strict=True):
            ax.set_xticks([])
            ax.set_yticks([])
            img = samples[task].get(col)
            if img is not None:
                ax.imshow(img[i, 0].numpy(), cmap="gray", vmin=-1, vmax=1)
            if (task, i) == rows[0]:
                ax.set_title(col.replace(", ", "\n"), fontsize=6)
            if col == columns[0]:
                ax.set_ylabel(task, fontsize=6)
    fig.tight_layout()
    path = out / "bench_quality_grid.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


def write_outputs(results: dict[str, Any], meta: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    md = out / "bench_quality.md"
    md.write_text(markdown(results, meta))
    js = out / "bench_quality.json"
    js.write_text(json.dumps({"meta": meta, "runs": results["runs"]}, indent=1))
    samples = out / SAMPLES_FILE
    if results["samples"] is None:  # --combine --no-grid: no grid images to save
        if samples.exists():
            # an older samples file here no longer matches the runs; a later --combine would build a
            # grid that silently lacks the new runs
            samples.unlink()
        return [md, js, *plot(results, out)]
    # the grid's images, so that runs split over several processes can be combined (--combine)
    from safetensors.torch import save_file

    save_file({f"{task}|{col}": img.to(torch.float16).contiguous()
               for task, cols in results["samples"].items() for col, img in cols.items()}, str(samples))
    return [md, js, samples, *plot(results, out)]


def combine(parts: Sequence[Path], tasks: Sequence[str] | None = None,
            solvers: Sequence[str] | None = None, variants: Sequence[str] | None = None,
            steps: Sequence[int] | None = None, grid: bool = True
            ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Merge the outputs of runs split over processes or machines (each an ``--out`` folder).

    The parts must agree on images, seed, alpha, device and the ST-LPIPS setting, and no
    (task, solver, variant, steps) may appear twice; their step counts and thread counts may differ
    (the report lists every thread count). ``tasks``, ``solvers``, ``variants`` and ``steps`` keep
    only those runs (None keeps all); naming one that no part ran is an error. The image grid keeps,
    per task and solver/variant, the sample of the largest kept step count; only the parts holding
    those runs need their samples file, and a missing one is an error. ``grid=False``
    (``--no-grid``) neither reads the parts' samples files nor makes a grid (``results["samples"]``
    is None), so parts whose samples file was lost still combine; meta's ``grid_note`` says so in
    the report. Returns (results, meta) for :func:`write_outputs`.
    """
    from safetensors.torch import load_file

    if not parts:
        raise ValueError("--combine needs at least one folder")
    runs: list[dict[str, Any]] = []
    metas: list[dict[str, Any]] = []
    part_keys: list[set[tuple[str, str, str, int]]] = []  # the runs of each part
    for part in parts:
        js = Path(part) / "bench_quality.json"
        if not js.is_file():
            raise FileNotFoundError(f"--combine: {js} not found (each folder must be the --out of a "
                                    "bench.quality run)")
        data = json.loads(js.read_text())
        metas.append(data["meta"])
        runs += data["runs"]
        part_keys.append({(r["task"], r["solver"], r["variant"], r["steps"]) for r in data["runs"]})
    # step counts may differ between parts (e.g. a longer run for some tasks): no run may repeat
    for field in ("images", "seed", "alpha", "device", "lpips_note"):
        values = {json.dumps(m.get(field)) for m in metas}
        if len(values) > 1:
            raise ValueError(f"--combine: the parts differ in {field!r} ({', '.join(sorted(values))}); "
                             "only runs with the same settings can be combined")
    seen = set()
    for r in runs:
        key = (r["task"], r["solver"], r["variant"], r["steps"])
        if key in seen:
            raise ValueError(f"--combine: {key} appears in more than one part")
        seen.add(key)
    selection = {"tasks": tasks, "solvers": solvers, "variants": variants, "steps": steps}
    field_of = {"tasks": "task", "solvers": "solver", "variants": "variant", "steps": "steps"}
    for option, wanted in selection.items():
        if wanted is None:
            continue
        present = {r[field_of[option]] for r in runs}
        missing = [w for w in wanted if w not in present]
        if missing:
            raise ValueError(f"--combine: --{option} {' '.join(map(str, missing))} was not run by any part "
                             f"(the parts have {', '.join(map(str, sorted(present)))})")
        runs = [r for r in runs if r[field_of[option]] in wanted]
    # one canonical row order whatever the order of the parts: tasks, solvers, variants as listed in
    # bench.tasks (names from elsewhere last), then steps
    def rank(names: Sequence[str], name: str) -> int:
        return list(names).index(name) if name in names else len(names)

    runs.sort(key=lambda r: (rank(list(TASKS), r["task"]), rank(SOLVER_NAMES, r["solver"]),
                             rank(VARIANTS, r["variant"]), r["steps"]))
    samples: dict[str, dict[str, torch.Tensor]] | None = None
    if grid:
        # the grid shows, per (task, solver, variant), its largest kept step count: only the parts
        # holding those runs need their samples file (a part whose runs all have longer ones elsewhere
        # may have lost it)
        column_steps: dict[tuple[str, str, str], int] = {}
        for r in runs:
            method = (r["task"], r["solver"], r["variant"])
            column_steps[method] = max(column_steps.get(method, 0), r["steps"])

        def column_of(method: tuple[str, str, str]) -> str:
            return f"{method[0]} '{sample_column(method[1], method[2], column_steps[method])}'"

        # ground truth goes in first, while the parts are read; the columns after
        samples = {task: {} for task in dict.fromkeys(r["task"] for r in runs)}
        images: dict[tuple[str, str, str], torch.Tensor] = {}
        for part, keys, meta_of_part in zip(parts, part_keys, metas, strict=True):
            wanted = [m for m, n in column_steps.items() if (*m, n) in keys]
            if not wanted:
                continue
            st = Path(part) / SAMPLES_FILE
            if not st.is_file():
                columns = ", ".join(column_of(m) for m in wanted)
                raise FileNotFoundError(f"--combine: {st} not found; the grid's images of {columns} are in "
                                        "it (--no-grid combines the tables and plots without them)")
            stored: dict[tuple[str, str, str, int], torch.Tensor] = {}
            for key, img in load_file(str(st)).items():
                task, col = key.split("|", 1)
                if col == "ground truth":
                    if task in samples:
                        samples[task]["ground truth"] = img.float()
                    continue
                match = _COLUMN.match(col)
                # parts written before the column named its step count hold their largest one
                method, n = ((match["method"], int(match["steps"])) if match
                             else (col, max(meta_of_part["steps"])))
                solver, variant = method.split(" ", 1)
                stored[(task, solver, variant, n)] = img.float()
            for method in wanted:
                key = (*method, column_steps[method])
                if key not in stored:
                    raise ValueError(f"--combine: {st} lacks the grid's image of {column_of(method)}, a run "
                                     "of that part (a samples file holds each method's largest step count "
                                     "only; --no-grid combines the tables and plots without it)")
                images[method] = stored[key]
        for task in samples:
            if "ground truth" not in samples[task]:  # written by every run, so only a damaged file lacks it
                raise ValueError(f"--combine: no samples file of task {task!r} holds its ground truth")
        # columns in the runs' order (the samples file stores its keys sorted)
        for method in column_steps:
            samples[method[0]][sample_column(*method[1:], column_steps[method])] = images[method]
    first = metas[0]
    # parts may run with different --threads (e.g. a long run on both cores): keep every count
    threads = sorted({n for m in metas for n in _thread_counts(m)})
    meta = {**first,
            "command": " + ".join(f"`{m['command']}`" for m in metas).strip("`"),
            "tasks": list(dict.fromkeys(r["task"] for r in runs)),
            "solvers": list(dict.fromkeys(r["solver"] for r in runs)),
            "variants": list(dict.fromkeys(r["variant"] for r in runs)),
            "steps": sorted({r["steps"] for r in runs}),
            "wall_s": sum(m["wall_s"] for m in metas),
            "threads": threads[0] if len(threads) == 1 else threads,
            "parts": sum(m.get("parts", 1) for m in metas)}  # a part may itself be combined
    chosen = [f"--{k} {' '.join(map(str, v))}" for k, v in selection.items() if v is not None]
    # a part's own selection applied to its runs only, so it is kept apart from this one's
    earlier = [s for m in metas for s in [*m.get("earlier_selections", []), m.get("selection")] if s]
    meta.pop("selection", None)
    meta.pop("earlier_selections", None)
    meta.pop("grid_note", None)
    if not grid:
        meta["grid_note"] = ("not rewritten by this `--combine --no-grid` (a part's samples file was "
                             "not kept); an earlier bench_quality_grid.png in this folder shows only the "
                             "runs its column titles name.")
    if chosen:
        meta["selection"] = " ".join(chosen)
    if earlier:
        meta["earlier_selections"] = earlier
    return {"runs": runs, "samples": samples}, meta


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"small smoke run: {QUICK} (explicit options still override)")
    parser.add_argument("--tasks", nargs="+", default=None, help=f"default: all of {list(TASKS)}")
    parser.add_argument("--solvers", nargs="+", default=None, help=f"default: all of {list(SOLVER_NAMES)}")
    parser.add_argument("--variants", nargs="+", default=None, help=f"default: all of {list(VARIANTS)}")
    parser.add_argument("--steps", nargs="+", type=int, default=None, help="default: 25 50 100 250")
    parser.add_argument("--images", type=int, default=None, help="number of test images (default 64)")
    parser.add_argument("--alpha", type=float, default=None,
                        help="EquiReg weight (fixed, not tuned; default 0.01)")
    parser.add_argument("--seed", type=int, default=None, help="default 0")
    parser.add_argument("--no-lpips", action="store_true", help="skip the ST-LPIPS column")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default 1)")
    add_malloc_option(parser)
    parser.add_argument("--device", default=None, help="default cpu")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    parser.add_argument("--combine", nargs="+", type=Path, default=None, metavar="DIR",
                        help="write one report from the --out folders of runs split over processes; "
                             "--tasks/--solvers/--variants/--steps then select runs, the other run "
                             "options are refused (the parts' settings apply)")
    parser.add_argument("--no-grid", action="store_true",
                        help="with --combine: write the tables and plots but not the image grid, so parts "
                             "whose samples file is gone can be combined")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(f"# {msg}", file=sys.stderr, flush=True)

    # names and step counts are checked in both modes (with --combine they select runs)
    try:
        for name, valid in (("tasks", list(TASKS)), ("solvers", SOLVER_NAMES), ("variants", VARIANTS)):
            if getattr(args, name) is not None:
                check_names(getattr(args, name), valid, name)
    except ValueError as err:
        parser.error(str(err))
    if args.steps is not None and (any(n < 1 for n in args.steps) or len(set(args.steps)) != len(args.steps)):
        parser.error(f"--steps must be distinct ints >= 1, got {args.steps}")
    quick = QUICK if args.quick else {}

    if args.no_grid and not args.combine:
        parser.error("--no-grid only applies to --combine (a run always writes its grid)")
    if args.combine:
        given = [f"--{name.replace('_', '-')}" for name in ("quick", "images", "alpha", "seed", "no_lpips",
                                                             "threads", "device", "default_malloc")
                 if getattr(args, name) is not None and getattr(args, name) is not False]
        if given:
            parser.error(f"{', '.join(given)} cannot be used with --combine: the parts' own settings apply "
                         "(--tasks, --solvers, --variants and --steps select runs)")
        try:
            results, meta = combine(args.combine, args.tasks, args.solvers, args.variants, args.steps,
                                    grid=not args.no_grid)
        except (FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for path in write_outputs(results, meta, args.out):
            log(f"wrote {path}")
        return 0

    tasks = args.tasks or quick.get("tasks") or list(TASKS)
    solvers = args.solvers or quick.get("solvers") or list(SOLVER_NAMES)
    variants = args.variants or quick.get("variants") or list(VARIANTS)
    steps = args.steps or quick.get("steps") or [25, 50, 100, 250]
    n_images = args.images or quick.get("images") or 64
    threads = 1 if args.threads is None else args.threads
    if threads < 1:
        parser.error("--threads must be >= 1")
    args.alpha = 0.01 if args.alpha is None else args.alpha
    args.seed = 0 if args.seed is None else args.seed
    args.device = args.device or "cpu"
    torch.set_num_threads(threads)
    apply_malloc_option(args)

    t0 = time.perf_counter()
    from samplers.models.fashion import load_test_images

    priors = sorted({SOLVER_PRIOR[s] for s in solvers})
    try:
        models = load_models(priors, need_mpe="equi" in variants and "pixel" in priors,
                             need_autoencoder="equicon" in variants, device=args.device)
        images, _ = load_test_images(n_images, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    lpips, lpips_note = None, ""
    if args.no_lpips:
        lpips_note = "skipped (--no-lpips)."
    else:
        try:
            lpips = load_stlpips(args.device)
            lpips_note = (f"AlexNet, shift-tolerant weights of stlpips-pytorch, images upsampled to "
                          f"{LPIPS_SIZE} px.")
        except ImportError as err:
            lpips_note = (f"column skipped: {err}. Install the `lpips` extra (stlpips-pytorch and a "
                          "torchvision that imports beside your torch).")
            log(f"ST-LPIPS {lpips_note}")
    results = run_quality(models, images, tasks, solvers, variants, steps, args.alpha, args.seed, lpips, log)
    meta = {"command": "python -m bench.quality " + " ".join(sys.argv[1:] if argv is None else argv),
            "images": n_images, "seed": args.seed, "alpha": args.alpha, "tasks": tasks, "solvers": solvers,
            "variants": variants, "steps": steps, "device": str(args.device), "threads": threads,
            "lpips_note": lpips_note, "wall_s": time.perf_counter() - t0}
    for path in write_outputs(results, meta, args.out):
        log(f"wrote {path}")
    log(f"wall time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
