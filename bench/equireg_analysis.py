"""Why EquiReg does or does not help here: an alpha sweep and the equivariance error along trajectories.

Usage::

    python -m bench.equireg_analysis [--quick] [--tasks sr4 box_inpaint] [--solvers dps psld]
                                     [--variants equi equicon] [--alphas 0 0.01 0.1 1 10]
                                     [--steps 25] [--images 16] [--out docs/]

Everything here runs on the 32 VALIDATION images (``data/fashion_val32.safetensors``: held-out
training images), never on the test images of ``bench.quality``: choosing alpha is tuning.

1. Alpha sweep: PSNR and residual of every (task, solver, variant) at each alpha (alpha = 0 is the
   solver without EquiReg), and the alpha with the best mean validation PSNR.
2. Trajectories: at every step of every run the sampler callback's x0 estimate x0_hat (in the
   prior's own space) is probed with the variant's penalty P (hflip element, ``norm`` reduction, no
   alpha): the value P(x0_hat) and the relative error P / ||f(x0_hat)|| (equi) or P / ||x0_hat||
   (equicon), each next to its value at the clean validation images (what the MPE premise says
   clean data scores), and the gradient ratio ||grad P(x0_hat)|| / ||grad ||y - A(x0_hat)|| || (both
   w.r.t. x0_hat, median over images). The second number is what alpha multiplies: alpha * ratio is
   the penalty's pull relative to the data term's, so alpha ~ 1/ratio is where EquiReg starts to
   matter at all.

Outputs in ``--out``: ``equireg_analysis.md``, ``equireg_analysis.json``,
``equireg_alpha_sweep.png`` and ``equireg_trajectories.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
    Prior,
    add_malloc_option,
    apply_malloc_option,
    check_names,
    get_task,
    load_models,
    make_equireg,
    mean_ci95,
    measure,
    residual_rms,
    run_solver_on,
    solver_options_for,
)
from samplers.metrics import psnr
from samplers.operators.base import Operator

QUICK = {
    "tasks": ["sr4"],
    "solvers": ["dps", "psld"],
    "variants": ["equi"],
    "alphas": [0.0, 1.0],
    "steps": 5,
    "images": 4,
}
DEFAULT_ALPHAS = [0.0, 0.01, 0.1, 1.0, 10.0]
REG_VARIANTS = tuple(v for v in VARIANTS if v != "none")


class TrajectoryProbe:
    """Sampler callback recording, per step, P(x0_hat) and the gradient ratio (module docstring)."""

    def __init__(self, probe_reg: Any, prior: Prior, op: Operator, y: torch.Tensor) -> None:
        self.reg, self.prior, self.op, self.y = probe_reg, prior, op, y
        self.element = probe_reg.group.sample_from[0]
        self.records: dict[str, list[float]] = {"sigma": [], "penalty": [], "relative": [], "grad_ratio": []}

    def penalty(self, x0: torch.Tensor) -> torch.Tensor:
        """Per-sample P(x0) without alpha, for the fixed element."""
        return self.reg.equivariance_error(x0, element=self.element)

    def __call__(self, info: dict[str, Any]) -> None:
        x0 = info["denoised"].detach().float()
        with torch.enable_grad():
            leaf = x0.clone().requires_grad_(True)
            pen = self.penalty(leaf)
            (g_pen,) = torch.autograd.grad(pen.sum(), leaf)
            leaf = x0.clone().requires_grad_(True)
            data = (self.op(self.prior.to_image(leaf)) - self.y).flatten(1).norm(dim=1)
            (g_data,) = torch.autograd.grad(data.sum(), leaf)
        ratio = g_pen.flatten(1).norm(dim=1) / g_data.flatten(1).norm(dim=1).clamp_min(1e-12)
        self.records["sigma"].append(float(info["sigma"]))
        self.records["penalty"].append(float(pen.detach().median()))
        with torch.no_grad():
            self.records["relative"].append(float((pen.detach() / penalty_scale(self.reg, x0)).median()))
        self.records["grad_ratio"].append(float(ratio.median()))


def penalty_scale(reg: Any, x: torch.Tensor) -> torch.Tensor:
    """Per-sample size of what P compares: ||f(x)|| for ``equi``, ||x|| for ``equicon``. P / scale is a
    relative error, comparable between inputs whose features are larger or smaller (blurry images
    have smaller features, so their absolute P is smaller too)."""
    v = reg.f(x) if reg.form == "equi" else x
    return v.flatten(1).norm(dim=1).clamp_min(1e-12)


def clean_penalty(probe_reg: Any, prior: Prior, images: torch.Tensor) -> dict[str, list[float]]:
    """P and P / scale at the clean validation images, in the prior's space (latents: the encoder's
    output)."""
    with torch.no_grad():
        x = images if prior.encode is None else prior.encode(images)
        pen = probe_reg.equivariance_error(x, element=probe_reg.group.sample_from[0])
        return {"penalty": pen.tolist(), "relative": (pen / penalty_scale(probe_reg, x)).tolist()}


def run_analysis(
    models: Models,
    images: torch.Tensor,
    tasks: Sequence[str],
    solvers: Sequence[str],
    variants: Sequence[str],
    alphas: Sequence[float],
    steps: int,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every (task, solver, variant, alpha) run with its metrics and trajectory records."""
    runs: list[dict[str, Any]] = []
    clean: dict[str, list[float]] = {}
    for ti, task in enumerate(tasks):
        op = get_task(task).build()
        # position-dependent noise seed (unlike bench.quality's measurement_seed): docs/equireg_analysis
        # was made by one process with this seed, and its command must keep reproducing it
        y = measure(op, images, seed + 1000 * (ti + 1), SIGMA_Y)
        for solver in solvers:
            prior = models.priors[SOLVER_PRIOR[solver]]
            baseline: dict[str, Any] | None = None
            for variant in variants:
                probe_reg = make_equireg(variant, prior, models, 1.0, seed=seed)
                key = f"{prior.name}/{variant}"
                if key not in clean:
                    clean[key] = clean_penalty(probe_reg, prior, images)
                for alpha in alphas:
                    probe = TrajectoryProbe(probe_reg, prior, op, y)
                    if alpha == 0 and baseline is not None:
                        # the run without EquiReg does not depend on the variant: reuse its result, but
                        # probe its trajectory again with this variant's P
                        rec, seconds = baseline["rec"], baseline["seconds"]
                        run_solver_on(
                            solver,
                            prior,
                            op,
                            y,
                            steps,
                            None,
                            seed,
                            solver_options_for(solver, task),
                            callback=probe,
                        )
                    else:
                        reg = make_equireg(variant, prior, models, alpha, seed=seed) if alpha > 0 else None
                        t0 = time.perf_counter()
                        rec = run_solver_on(
                            solver,
                            prior,
                            op,
                            y,
                            steps,
                            reg,
                            seed,
                            solver_options_for(solver, task),
                            callback=probe,
                        )
                        seconds = time.perf_counter() - t0
                        if alpha == 0:
                            baseline = {"rec": rec, "seconds": seconds}
                    values = {
                        "psnr": psnr(rec, images, 2.0).tolist(),
                        "residual": residual_rms(op, rec, y).tolist(),
                    }
                    runs.append(
                        {
                            "task": task,
                            "solver": solver,
                            "prior": prior.name,
                            "variant": variant,
                            "alpha": float(alpha),
                            "steps": steps,
                            "seconds": seconds,
                            "values": values,
                            "trajectory": probe.records,
                        }
                    )
                    if log is not None:
                        log(
                            f"{task} {solver}/{variant} alpha {alpha:g}: "
                            f"psnr {mean_ci95(values['psnr'])[0]:.3f}, "
                            f"residual {mean_ci95(values['residual'])[0]:.3f}, median grad ratio "
                            f"{_median(probe.records['grad_ratio']):.3g} ({seconds:.1f} s)"
                        )
    return {"runs": runs, "clean_penalty": clean}


def _median(values: Sequence[float]) -> float:
    return float(torch.tensor(values, dtype=torch.float64).median()) if values else float("nan")


def best_alpha(runs: list[dict[str, Any]], task: str, solver: str, variant: str) -> dict[str, Any]:
    """The run with the highest mean validation PSNR among this (task, solver, variant)'s alphas."""
    group = [r for r in runs if (r["task"], r["solver"], r["variant"]) == (task, solver, variant)]
    return max(group, key=lambda r: mean_ci95(r["values"]["psnr"])[0])


def _paired_gain(run: dict[str, Any], base: dict[str, Any]) -> tuple[float, float]:
    """Mean and 95% half-width of the per-image PSNR difference (same images, same seeds)."""
    diff = [a - b for a, b in zip(run["values"]["psnr"], base["values"]["psnr"], strict=True)]
    return mean_ci95(diff)


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    runs = results["runs"]
    alphas = meta["alphas"]
    lines = [
        "# EquiReg analysis: alpha sweep and equivariance along trajectories (validation images)",
        "",
        f"Command: `{meta['command']}`; {meta['images']} VALIDATION images (held-out training data, "
        f"not the test images), {meta['steps']} steps, seed {meta['seed']}, sigma_y = {SIGMA_Y}, "
        f"hflip group, wall time {meta['wall_s']:.0f} s on {meta['device']} ({meta['threads']} thread(s)).",
        "",
        "## PSNR (dB) against alpha",
        "",
        "Cells: mean ± 95% half-width over images. Gain: best alpha minus alpha = 0, paired per image "
        "(mean ± 95% half-width of the differences).",
        "",
        "| task | solver | EquiReg | " + " | ".join(f"α={a:g}" for a in alphas) + " | best α | gain (dB) |",
        "|---|---|---|" + "---|" * len(alphas) + "---|---|",
    ]
    keys = list(dict.fromkeys((r["task"], r["solver"], r["variant"]) for r in runs))
    for task, solver, variant in keys:
        group = {
            r["alpha"]: r for r in runs if (r["task"], r["solver"], r["variant"]) == (task, solver, variant)
        }
        cells = []
        for a in alphas:
            m, h = mean_ci95(group[a]["values"]["psnr"])
            cells.append(f"{m:.2f} ± {h:.2f}")
        best = best_alpha(runs, task, solver, variant)
        gain = "–"
        if 0.0 in group and best["alpha"] != 0.0:
            gm, gh = _paired_gain(best, group[0.0])
            gain = f"{gm:+.2f} ± {gh:.2f}"
        lines.append(
            f"| {task} | {solver} | {variant} | " + " | ".join(cells) + f" | {best['alpha']:g} | {gain} |"
        )
    lines += [
        "",
        "## Along the trajectories",
        "",
        "P = the variant's penalty without alpha (hflip, norm) at the x0 estimate of each step; "
        "`P clean` = P at the clean validation images (the MPE premise: clean data is nearly "
        "equivariant). Ratio = ||∇P|| / ||∇ ||y − A x0||||, both w.r.t. the x0 estimate, median over "
        "images and then over steps: α·ratio is the penalty's pull relative to the data term's. `rel.` = P / "
        "||f(x)|| (equi) or P / ||x|| (equicon): the relative error, which does not reward small features. "
        "Values are medians over images; `final` = the last step's x0 estimate.",
        "",
        "| task | solver | EquiReg | P clean | P final, α=0 | P final, best α | rel. clean | "
        "rel. final, α=0 | rel. final, best α | ratio (α=0 run) | α·ratio at α=0.01 | α·ratio at best α |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task, solver, variant in keys:
        group = {
            r["alpha"]: r for r in runs if (r["task"], r["solver"], r["variant"]) == (task, solver, variant)
        }
        prior = group[alphas[0]]["prior"]
        clean = results["clean_penalty"][f"{prior}/{variant}"]
        base = group.get(0.0, group[min(group)])
        best = best_alpha(runs, task, solver, variant)
        ratio = _median(base["trajectory"]["grad_ratio"])
        bt, kt = base["trajectory"], best["trajectory"]
        lines.append(
            f"| {task} | {solver} | {variant} | {_median(clean['penalty']):.3g} | {bt['penalty'][-1]:.3g} | "
            f"{kt['penalty'][-1]:.3g} | {_median(clean['relative']):.3g} | {bt['relative'][-1]:.3g} | "
            f"{kt['relative'][-1]:.3g} | {ratio:.3g} | {0.01 * ratio:.2g} | "
            f"{best['alpha'] * _median(best['trajectory']['grad_ratio']):.2g} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], meta: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    tasks = list(dict.fromkeys(r["task"] for r in runs))
    alphas = meta["alphas"]
    keys = list(dict.fromkeys((r["solver"], r["variant"]) for r in runs))
    written = []

    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for solver, variant in keys:
            pts = [
                mean_ci95(r["values"]["psnr"])
                for a in alphas
                for r in runs
                if (r["task"], r["solver"], r["variant"], r["alpha"]) == (task, solver, variant, a)
            ]
            if len(pts) != len(alphas):
                continue
            ms, hs = zip(*pts, strict=True)
            ax.errorbar(
                range(len(alphas)),
                ms,
                yerr=hs,
                marker="o",
                capsize=2,
                linestyle="--" if variant == "equi" else ":",
                label=f"{solver}/{variant}",
            )
        ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
        ax.set_xlabel("alpha")
        ax.set_title(f"{task}: PSNR (dB), validation")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path = out / "equireg_alpha_sweep.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)

    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.2 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks, strict=True):
        for solver, variant in keys:
            group = [r for r in runs if (r["task"], r["solver"], r["variant"]) == (task, solver, variant)]
            if not group:
                continue
            best = best_alpha(runs, task, solver, variant)
            shown = [r for r in group if r["alpha"] == 0.0] + ([best] if best["alpha"] != 0.0 else [])
            for r in shown:
                style = "-" if r["alpha"] == 0.0 else "--"
                label = f"{solver}/{variant} α={r['alpha']:g}"
                steps = range(1, len(r["trajectory"]["penalty"]) + 1)
                line = row[0].plot(steps, r["trajectory"]["relative"], style, label=label)[0]
                row[1].plot(steps, r["trajectory"]["grad_ratio"], style, color=line.get_color(), label=label)
            if shown:
                clean = _median(results["clean_penalty"][f"{group[0]['prior']}/{variant}"]["relative"])
                row[0].axhline(clean, color=line.get_color(), linewidth=0.8, alpha=0.6)
        row[0].set_yscale("log")
        row[0].set_title(f"{task}: relative P(x0 estimate); thin: clean images", fontsize=9)
        row[1].set_yscale("log")
        row[1].set_title(f"{task}: ||∇P|| / ||∇ data term|| (no alpha)", fontsize=9)
        for ax in row:
            ax.set_xlabel("step")
        row[1].legend(fontsize=6)
    fig.tight_layout()
    path = out / "equireg_trajectories.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.equireg_analysis", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK} (explicit options override)"
    )
    parser.add_argument("--tasks", nargs="+", default=None, help="default: sr4 box_inpaint")
    parser.add_argument("--solvers", nargs="+", default=None,
                        help="default: dps psld (with EquiReg DAPS/SITCOM cost 5-20x more)")
    parser.add_argument("--variants", nargs="+", default=None, help=f"default: all of {list(REG_VARIANTS)}")
    parser.add_argument("--alphas", nargs="+", type=float, default=None, help=f"default: {DEFAULT_ALPHAS}")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps (default 25)")
    parser.add_argument("--images", type=int, default=None, help="validation images (default 16, at most 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    add_malloc_option(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)

    quick = QUICK if args.quick else {}
    try:
        tasks = check_names(args.tasks or quick.get("tasks") or ["sr4", "box_inpaint"], list(TASKS), "tasks")
        solvers = check_names(
            args.solvers or quick.get("solvers") or ["dps", "psld"], SOLVER_NAMES, "solvers"
        )
        variants = check_names(
            args.variants or quick.get("variants") or list(REG_VARIANTS), REG_VARIANTS, "variants"
        )
    except ValueError as err:
        parser.error(str(err))
    alphas = args.alphas if args.alphas is not None else quick.get("alphas", DEFAULT_ALPHAS)
    if any(not (a >= 0 and a != float("inf")) for a in alphas) or len(set(alphas)) != len(alphas):
        parser.error(f"--alphas must be distinct finite numbers >= 0, got {alphas}")
    alphas = sorted(float(a) for a in alphas)
    steps = args.steps or quick.get("steps") or 25
    if steps < 1:
        parser.error(f"--steps must be >= 1, got {steps}")
    n_images = args.images or quick.get("images") or 16
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)
    apply_malloc_option(args)

    def log(msg: str) -> None:
        print(f"# {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    from samplers.models.fashion import load_validation_images

    priors = sorted({SOLVER_PRIOR[s] for s in solvers})
    try:
        models = load_models(
            priors,
            need_mpe="equi" in variants and "pixel" in priors,
            need_autoencoder="equicon" in variants,
            device=args.device,
        )
        images, _ = load_validation_images(n_images, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = run_analysis(models, images, tasks, solvers, variants, alphas, steps, args.seed, log)
    meta = {
        "command": "python -m bench.equireg_analysis " + " ".join(sys.argv[1:] if argv is None else argv),
        "images": n_images,
        "seed": args.seed,
        "alphas": alphas,
        "steps": steps,
        "tasks": tasks,
        "solvers": solvers,
        "variants": variants,
        "device": str(args.device),
        "threads": args.threads,
        "wall_s": time.perf_counter() - t0,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    md = args.out / "equireg_analysis.md"
    md.write_text(markdown(results, meta))
    js = args.out / "equireg_analysis.json"
    js.write_text(json.dumps({"meta": meta, **results}, indent=1))
    for path in [md, js, *plot(results, meta, args.out)]:
        log(f"wrote {path}")
    log(f"wall time {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
