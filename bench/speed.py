"""Per-step cost of every solver, with and without EquiReg, on the pixel and latent priors.

Usage::

    python -m bench.speed [--quick] [--solvers ...] [--priors pixel latent] [--batch 8] [--steps 10]
                          [--repeats 3] [--device cpu] [--no-memory] [--out docs/]

Everything is measured side by side in one process on the same inputs (a sr4 measurement of
held-out images, or random images if the test set is absent):

- unit costs (median of ``--repeats``, for reference): denoiser forward, denoiser forward + backward
  (w.r.t. its input), and the same for the decoder, the encoder and each EquiReg f;
- each solver run is wrapped so that every call of the denoiser, decoder, encoder and f is counted
  and its inputs recorded, split into calls with autograd and without. The **necessary** time of a
  run is the time to *replay* exactly those calls (forward + backward w.r.t. the input for the calls
  with autograd, forward for the others), and the f time the replay of the f calls alone;
  **solver overhead** = step time / (necessary + f) - 1 (target <= 10%: the solver's own arithmetic
  costs little next to its network calls);
- **EquiReg**: step time with Equi / base step time, and the **EquiReg excess** =
  (t_equireg - t_base - (necessary_equireg + f - necessary_base)) / t_base: what EquiReg costs beyond
  its own f evaluations (and any change in network calls), target <= 5%;
- ``--variants trivial`` (a diagnostic row, not a method): the Equi penalty with f(z) = z * 1 in
  place of the MPE function. f then costs almost nothing and the difference is exactly zero (so is
  its gradient: the samples are those of the base run), so this row's EquiReg excess is the fixed
  cost of EquiReg's own machinery (group action, difference, norm, their backward and the autograd
  call each time the penalty is evaluated), the floor below which no f can bring the excess;
- runs and replays are interleaved (run, replay, f replay, for each variant in turn, ``--repeats``
  times) and every figure is the fastest of its repeats (interference only slows a measurement
  down), so a noisy machine does not show up as solver overhead;
- variants whose denoiser/decoder/encoder calls are the same work (same count, grad mode and
  argument shapes, in order; e.g. DAPS with and without EquiReg) share one necessary time, the
  fastest of all their replays: replaying the same work twice and differencing the two timings
  would only add the machine's noise to the EquiReg excess;
- **outside networks + autograd**: one more run per row split in place (:func:`split_run`): the share
  of its time spent neither inside a network's forward call nor inside ``torch.autograd.grad``,
  i.e. the solver's own arithmetic and Python. Measured within one run, it does not depend on how
  fast the machine was at another moment (an upper bound on the solver's own cost would add the
  backward of its loss through the operator, which sits inside autograd);
- **peak memory**: on CUDA ``torch.cuda.max_memory_allocated`` minus the memory allocated before the
  run; on CPU the run is repeated in a forked child process and the figure is the growth of its peak
  resident set size (``getrusage`` ``ru_maxrss`` minus the RSS at fork; Linux resets the high-water
  mark at fork). tracemalloc is not used: it does not see torch's CPU allocator.

Weights: the trained priors when present; otherwise the same architectures (``train/pixel_prior.py``,
``train/latent_prior.py``) with random weights, which cost the same time (noted in the output).
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from bench.tasks import (
    IMAGE_SIZE,
    PRIORS,
    SOLVER_NAMES,
    VARIANTS,
    Models,
    Prior,
    add_malloc_option,
    apply_malloc_option,
    check_names,
    get_task,
    initial_noise,
    karras_sigmas,
    make_equireg,
    measure,
)
from samplers.equireg import EquiReg

OVERHEAD_TARGET = 0.10
EQUIREG_TARGET = 0.05
QUICK = {"batch": 2, "steps": 3, "repeats": 1, "solvers": ["dps", "psld"]}
#: Solver options of this benchmark: ReSample's hard-consistency inner loops (2000 pixel + 500 latent
#: iterations) would dominate a short run, and with its default interval of 10 a 10-step run never
#: enters them; interval 5 makes a 10-step run do one pixel-space optimisation (plus the final
#: latent one). Its per-step figure is for this setting, stated in the output.
SPEED_OPTIONS: dict[str, dict[str, Any]] = {
    "resample": {"pixel_iters": 200, "latent_iters": 50, "interval": 5},
}
#: The variants this benchmark times: bench.quality's, plus the ``trivial`` diagnostic (docstring).
SPEED_VARIANTS: tuple[str, ...] = (*VARIANTS, "trivial")


class TrivialMPE(torch.nn.Module):
    """f(z) = z * 1: an MPE function that costs almost nothing yet keeps autograd running through f,
    exactly equivariant, so the Equi difference and its gradient are exactly zero."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * 1.0


def speed_equireg(variant: str, prior: Prior, models: Models, alpha: float) -> EquiReg | None:
    """The EquiReg a ``variant`` row times: bench.quality's for none/equi/equicon, and the Equi
    penalty of :class:`TrivialMPE` for ``trivial``."""
    if variant == "trivial":
        return EquiReg(TrivialMPE(), group="hflip", form="equi", alpha=alpha, seed=0)
    return make_equireg(variant, prior, models, alpha, seed=0)


def _detached(value: Any) -> Any:
    """A copy of a call argument that later solver steps cannot change (tensors detached and cloned)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(_detached(v) for v in value)
    if isinstance(value, list):
        return [_detached(v) for v in value]
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


class Counted:
    """Wrap a callable; count calls made with autograd recording (grad) and without.

    With ``record = True`` every call's inputs are also kept (detached copies) with its grad flag,
    so that :func:`replay` can re-run exactly the network work of a solver run.
    """

    def __init__(self, fn: Callable[..., torch.Tensor]) -> None:
        self.fn = fn
        self.grad = 0
        self.nograd = 0
        self.record = False
        self.calls: list[tuple[bool, tuple, dict]] = []
        #: [seconds, device] while an attribution run times the calls, else None
        self.timer: list | None = None

    def reset(self) -> None:
        self.grad = self.nograd = 0
        self.calls = []

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.timer is not None:  # attribution run: time this call (synchronised on CUDA)
            _sync(self.timer[1])
            t0 = time.perf_counter()
            out = self.fn(*args, **kwargs)
            _sync(self.timer[1])
            self.timer[0] += time.perf_counter() - t0
        else:
            out = self.fn(*args, **kwargs)
        with_grad = isinstance(out, torch.Tensor) and out.requires_grad
        if with_grad:
            self.grad += 1
        else:
            self.nograd += 1
        if self.record:
            self.calls.append((with_grad, _detached(args), _detached(kwargs)))
        return out


def replay(fn: Callable[..., torch.Tensor], calls: Sequence[tuple[bool, tuple, dict]]) -> None:
    """Re-run recorded calls of ``fn``: forward only for calls made without autograd, forward +
    backward w.r.t. the first argument for the others (what the solver's backward pass had to do
    for that network; its other inputs and the weights need no gradient)."""
    for with_grad, args, kwargs in calls:
        if not with_grad:
            with torch.no_grad():
                fn(*args, **kwargs)
            continue
        with torch.inference_mode(False), torch.enable_grad():
            leaf = args[0].detach().requires_grad_(True)
            out = fn(leaf, *args[1:], **kwargs)
            torch.autograd.grad(out.sum(), leaf)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(run: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - t0


def time_call(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up run (seconds)."""
    fn()
    return statistics.median(_timed(fn, device) for _ in range(repeats))


def unit_costs(fn: Callable[..., torch.Tensor], x: torch.Tensor, repeats: int,
               extra: Callable[[torch.Tensor], tuple] | None = None) -> tuple[float, float]:
    """(forward, forward + backward w.r.t. the input) times of ``fn`` at input ``x``."""
    args = (lambda t: (t,)) if extra is None else extra

    def fwd() -> None:
        with torch.no_grad():
            fn(*args(x))

    def fwd_bwd() -> None:
        with torch.enable_grad():
            leaf = x.detach().clone().requires_grad_(True)
            fn(*args(leaf)).sum().backward()

    return time_call(fwd, repeats, x.device), time_call(fwd_bwd, repeats, x.device)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _child_peak(run: Callable[[], Any], conn: Any) -> None:
    try:
        # an OpenMP thread pool inherited through fork can deadlock; one thread avoids parallel regions
        torch.set_num_threads(1)
        start = _rss_bytes()
        run()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
        conn.send(max(0, peak - start))
    except Exception as err:  # report, the parent prints n/a
        conn.send(f"{type(err).__name__}: {err}")
    finally:
        conn.close()


def peak_memory(run: Callable[[], Any], device: torch.device, timeout: float = 300.0) -> int | str:
    """Peak extra memory of ``run()`` in bytes (module docstring), or an error string."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    if sys.platform != "linux":
        return "n/a (needs Linux fork + /proc)"
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_peak, args=(run, child))
    proc.start()
    child.close()
    result = parent.recv() if parent.poll(timeout) else f"n/a (no result in {timeout:.0f} s)"
    proc.join(timeout=10)
    if proc.is_alive():
        proc.kill()
        proc.join()
    return result


def _random_models(device: torch.device) -> tuple[Models, list[str]]:
    """Trained weights where present, else the trained architectures with random weights."""
    from samplers.equireg import SmallCNN
    from samplers.models import fashion
    from samplers.models.autoencoder import KLAutoencoder
    from samplers.models.small_unet import EDMDenoiser, SmallUNet

    notes = []
    torch.manual_seed(0)

    def place(m: torch.nn.Module) -> torch.nn.Module:
        return m.to(device).eval().requires_grad_(False)

    try:
        ae = fashion.load_autoencoder(device=device)
    except FileNotFoundError:
        ae = place(KLAutoencoder())
        notes.append("autoencoder: random weights (file missing)")
    try:
        pixel = fashion.load_pixel_prior(device=device)
    except FileNotFoundError:
        from train.pixel_prior import UNET as PIXEL_UNET

        pixel = place(EDMDenoiser(SmallUNet(**PIXEL_UNET), 0.5))
        notes.append("pixel prior: random weights of the trained architecture (file missing)")
    try:
        latent = fashion.load_latent_prior(device=device, autoencoder=ae)
    except (FileNotFoundError, ValueError):
        from train.latent_prior import UNET as LATENT_UNET

        latent = place(EDMDenoiser(SmallUNet(**LATENT_UNET), 1.0))
        notes.append("latent prior: random weights of the trained architecture (file missing)")
    try:
        mpe = fashion.load_mpe(device=device)
    except FileNotFoundError:
        mpe = place(SmallCNN(in_channels=1, base_channels=32, num_blocks=3, num_classes=10))
        notes.append("MPE CNN: random weights (file missing)")
    priors = {
        "pixel": Prior("pixel", pixel, (1, IMAGE_SIZE, IMAGE_SIZE), sigma_max=pixel.sigma_max,
                       sigma_min=pixel.sigma_min),
        "latent": Prior("latent", latent, (4, IMAGE_SIZE // 4, IMAGE_SIZE // 4), ae.decode, ae.encode,
                        sigma_max=latent.sigma_max, sigma_min=latent.sigma_min),
    }
    return Models(priors, mpe, ae), notes


def _images(batch: int, device: torch.device) -> tuple[torch.Tensor, str]:
    from samplers.models.fashion import load_test_images

    try:
        return load_test_images(batch, device=device)[0], "held-out test images"
    except (FileNotFoundError, ValueError):
        gen = torch.Generator().manual_seed(0)
        images = torch.rand(batch, 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen) * 2 - 1
        return images.to(device), "random images"


def _instrumented(models: Models, prior_name: str, solver: str, variant: str, y: torch.Tensor, op: Any,
                  steps: int, alpha: float) -> tuple[Callable[[], None], dict[str, Counted]]:
    """One solver run with every network call wrapped in a :class:`Counted` (keyed model, decoder,
    encoder and f; absent networks are left out)."""
    from samplers.solvers import get_solver

    prior = models.priors[prior_name]
    counters = {"model": Counted(prior.model)}
    if prior.decode is not None:
        counters["decoder"] = Counted(prior.decode)
    if prior.encode is not None:
        counters["encoder"] = Counted(prior.encode)
    reg = speed_equireg(variant, prior, models, alpha)
    if reg is not None:
        counters["f"] = Counted(reg.f)
        reg.f = counters["f"]
    sigmas = karras_sigmas(steps, prior.sigma_min, prior.sigma_max)
    x_t = initial_noise(prior, y.shape[0], float(sigmas[0]), seed=0).to(y.device)
    fn = get_solver(solver)
    opts = SPEED_OPTIONS.get(solver, {})

    def run() -> None:
        if reg is not None:
            reg.reseed(0)
        fn(counters["model"], x_t, sigmas, extra_args={}, disable=True, operator=op, measurement=y,
           decode=counters.get("decoder"), encode=counters.get("encoder"), equireg=reg, seed=0, **opts)

    return run, counters


def split_run(run: Callable[[], None], counters: dict[str, Counted],
              device: torch.device) -> dict[str, float]:
    """One run with its time split in place: seconds inside the networks' forward calls, inside
    ``torch.autograd.grad`` (the networks' backward passes plus the backward of the solver's own
    loss), and the rest (the solver's own arithmetic and Python). Measured within a single run, so
    the split does not depend on how fast the machine was at another moment."""
    timer = [0.0, device]
    grad_time = [0.0]
    autograd_grad = torch.autograd.grad

    def timed_grad(*args: Any, **kwargs: Any) -> Any:
        _sync(device)
        t0 = time.perf_counter()
        out = autograd_grad(*args, **kwargs)
        _sync(device)
        grad_time[0] += time.perf_counter() - t0
        return out

    for c in counters.values():
        c.timer = timer
    torch.autograd.grad = timed_grad  # the solvers call torch.autograd.grad through the module
    try:
        total = _timed(run, device)
    finally:
        torch.autograd.grad = autograd_grad
        for c in counters.values():
            c.timer = None
    # an f that calls a wrapped network would be counted twice; f wraps the raw networks here
    rest = total - timer[0] - grad_time[0]
    return {"total_s": total, "forward_s": timer[0], "autograd_s": grad_time[0], "rest_s": rest}


def _shape_signature(value: Any) -> Any:
    """What a network call's cost depends on: tensor shapes and dtypes (not values), nested."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), str(value.dtype))
    if isinstance(value, (tuple, list)):
        return tuple(_shape_signature(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, _shape_signature(v)) for k, v in sorted(value.items()))
    return type(value).__name__


def network_work(counters: dict[str, Counted]) -> tuple:
    """A key equal for two runs exactly when their recorded denoiser/decoder/encoder calls are the
    same work: per network, every call's grad mode and argument shapes, in order."""
    return tuple((k, tuple((g, _shape_signature(a), _shape_signature(kw)) for g, a, kw in c.calls))
                 for k, c in counters.items() if k != "f")


def _replay_each(pairs: Sequence[tuple[Callable[..., torch.Tensor], list]]) -> None:
    for fn, calls in pairs:
        replay(fn, calls)


def bench_solver(models: Models, prior_name: str, solver: str, variants: Sequence[str], y: torch.Tensor,
                 op: Any, steps: int, repeats: int, alpha: float, memory: bool) -> list[dict[str, Any]]:
    """Time every EquiReg variant of one (prior, solver); one row per variant.

    A first run of each variant records its network calls. Then, ``repeats`` times and for every
    variant in turn: the solver run, the replay of its denoiser/decoder/encoder calls (the
    *necessary* time) and the replay of its f calls. Each figure is the fastest of its repeats:
    interference from other processes only ever slows a measurement down, so the minimum is the
    least noisy estimate of the true cost (as ``timeit`` advises), and interleaving exposes run and
    replay to the same conditions. ``times_s`` keeps every repeat. Variants whose network calls are
    the same work (:func:`network_work`) share the fastest of all their replays as necessary time.
    """
    device = y.device
    setups = {}
    work: dict[str, tuple] = {}
    for variant in variants:
        run, counters = _instrumented(models, prior_name, solver, variant, y, op, steps, alpha)
        for c in counters.values():
            c.record = True
        run()  # warm-up; records the calls of one run
        for c in counters.values():
            c.record = False
        counts = {k: (c.grad, c.nograd) for k, c in counters.items()}
        nets = [(c.fn, c.calls) for k, c in counters.items() if k != "f"]
        f_calls = [(c.fn, c.calls) for k, c in counters.items() if k == "f"]

        replay_all = functools.partial(_replay_each, nets)
        replay_f = functools.partial(_replay_each, f_calls)
        replay_all()
        replay_f()  # warm-up
        setups[variant] = (run, replay_all, replay_f, counts, counters)
        work[variant] = network_work(counters)

    times: dict[str, dict[str, list[float]]] = {v: {"run": [], "net": [], "f": []} for v in variants}
    for _ in range(repeats):
        for variant, (run, replay_all, replay_f, _counts, _c) in setups.items():
            times[variant]["run"].append(_timed(run, device))
            times[variant]["net"].append(_timed(replay_all, device))
            times[variant]["f"].append(_timed(replay_f, device) if "f" in _counts else 0.0)

    # one necessary time per distinct network work: the fastest replay of every variant doing it
    net_min = {variant: min(t for v in variants if work[v] == work[variant] for t in times[v]["net"])
               for variant in variants}
    rows = []
    for variant, (run, _ra, _rf, counts, counters) in setups.items():
        t = {k: min(v) for k, v in times[variant].items()}
        t["net"] = net_min[variant]
        row: dict[str, Any] = {
            "prior": prior_name, "solver": solver, "variant": variant, "steps": steps, "repeats": repeats,
            "step_s": t["run"] / steps, "necessary_step_s": t["net"] / steps, "f_step_s": t["f"] / steps,
            "calls": counts, "times_s": times[variant],
            "necessary_shared_with": [v for v in variants if v != variant and work[v] == work[variant]],
            # EquiReg's f evaluations are necessary too
            "overhead": t["run"] / (t["net"] + t["f"]) - 1,
        }
        if variant != "none" and "none" in times:
            b = {k: min(v) for k, v in times["none"].items()}
            b["net"] = net_min["none"]
            row["vs_base"] = t["run"] / b["run"]
            row["equireg_excess"] = (t["run"] - b["run"] - (t["net"] + t["f"] - b["net"])) / b["run"]
        row["split"] = split_run(run, counters, device)
        row["rest_share"] = row["split"]["rest_s"] / row["split"]["total_s"]
        row["peak_bytes"] = peak_memory(run, device) if memory else None
        rows.append(row)
    return rows


def measure_units(models: Models, priors: Sequence[str], variants: Sequence[str], batch: int,
                  repeats: int, alpha: float, device: torch.device) -> dict[str, tuple[float, float]]:
    """Unit (forward, forward+backward) times of every network a run calls, keyed prior/network."""
    units: dict[str, tuple[float, float]] = {}
    for name in priors:
        prior = models.priors[name]
        x = torch.randn(batch, *prior.shape, device=device)
        sig = torch.full((batch,), 1.0, device=device)
        units[f"{name}/model"] = unit_costs(prior.model, x, repeats, extra=lambda t, s=sig: (t, s))
        if prior.decode is not None:
            units[f"{name}/decoder"] = unit_costs(prior.decode, x, repeats)
            img = torch.rand(batch, 1, IMAGE_SIZE, IMAGE_SIZE, device=device) * 2 - 1
            units[f"{name}/encoder"] = unit_costs(prior.encode, img, repeats)
        for variant in variants:
            reg = speed_equireg(variant, prior, models, alpha)
            if reg is not None:
                units[f"{name}/f/{variant}"] = unit_costs(reg.f, x, repeats)
    return units


def _langevin_iteration(op: Any, y: torch.Tensor, x0_hat: torch.Tensor, gen: torch.Generator,
                        tau: float = 0.01, lr: float = 1e-4, r2: float = 1.0) -> Callable[[torch.Tensor],
                                                                                     torch.Tensor]:
    """The solver's own work in one pixel DAPS Langevin iteration (bench.quality's settings): the
    closed-form data gradient 2 A^T (A v - y) / tau^2, the in-place update and the noise draw."""
    keep, pull, scale = 1.0 - lr / r2, x0_hat * (lr / r2), (2 * lr) ** 0.5

    def iteration(v: torch.Tensor) -> torch.Tensor:
        r = op(v)
        grad = op.adjoint(r - y.reshape(r.shape)) * (2.0 / tau**2)
        noise = torch.randn(v.shape, generator=gen, dtype=v.dtype, device=v.device)
        return (v * keep).add_(pull).add_(grad, alpha=-lr).add_(noise, alpha=scale)

    return iteration


def interference_probe(models: Models, images: torch.Tensor, y: torch.Tensor, op: Any,
                       variants: Sequence[str] = ("equi", "trivial"), iterations: int = 100,
                       rounds: int = 5, alpha: float = 0.01) -> list[dict[str, Any]]:
    """Does evaluating f slow down the solver's own small ops between its evaluations?

    The replay of f's calls alone (the f column of the solver table) cannot show it. Pixel DAPS's
    Langevin loop is rebuilt from its two parts, the solver's own work (:func:`_langevin_iteration`)
    and the penalty (forward + backward of the ``variant``'s Equi penalty w.r.t. a leaf copy, as
    DAPS does), and each part is timed on its own within three loops of ``iterations`` iterations:
    solver work alone, penalty alone, and the two alternating (the real loop). Per variant and
    ``rounds`` interleaved times, the fastest of each. ``ops_slowdown_s`` (solver work between
    penalties minus alone, per iteration) is what f's evaluations cost the rest of the loop; for
    the ``trivial`` f (no activations to speak of) it shows the probe's noise floor. A fourth loop
    replays the penalty's two f calls as the solver table credits f (``f_replay_s``), so that
    ``excess_s`` = solver work + penalty in the loop - solver work alone - f replay is the loop's
    EquiReg excess per iteration, which times the iterations per step predicts the table's.
    """
    if iterations < 1 or rounds < 1:
        raise ValueError(f"interference_probe: iterations and rounds must be >= 1, got {iterations} and "
                         f"{rounds}")
    prior = models.priors["pixel"]
    device = images.device
    regs = {v: speed_equireg(v, prior, models, alpha) for v in variants}
    if any(reg is None for reg in regs.values()):
        raise ValueError(f"interference_probe: variants must have a penalty, got {list(variants)}")

    # the f calls of one penalty evaluation (f(T_g v), f(v)), replayed as the solver table credits
    # them: each call's forward + backward w.r.t. its own input
    f_calls = {}
    for v, reg in regs.items():
        counted, f = Counted(reg.f), reg.f
        counted.record, reg.f = True, counted
        with torch.inference_mode(False), torch.enable_grad():
            reg(images.detach().clone().requires_grad_(True), 0)
        reg.f = f
        reg.reseed(0)
        f_calls[v] = counted.calls

    def f_loop(v: str) -> tuple[float, float]:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(iterations):
            replay(regs[v].f, f_calls[v])
        _sync(device)
        return 0.0, (time.perf_counter() - t0) / iterations

    def loop(reg: EquiReg | None, with_ops: bool) -> tuple[float, float]:
        gen = torch.Generator(device=device).manual_seed(0)
        iteration = _langevin_iteration(op, y, images, gen)
        v, ops_s, pen_s = images.clone(), 0.0, 0.0
        for _ in range(iterations):
            if reg is not None:
                _sync(device)
                t0 = time.perf_counter()
                with torch.inference_mode(False), torch.enable_grad():
                    leaf = v.detach().clone().requires_grad_(True)
                    torch.autograd.grad(reg(leaf, 0).sum(), leaf)
                _sync(device)
                pen_s += time.perf_counter() - t0
            if with_ops:
                t0 = time.perf_counter()
                v = iteration(v)
                _sync(device)
                ops_s += time.perf_counter() - t0
        return ops_s / iterations, pen_s / iterations

    loops = {"ops_alone": functools.partial(loop, None, True),
             **{f"{v}/both": functools.partial(loop, reg, True) for v, reg in regs.items()},
             **{f"{v}/penalty_alone": functools.partial(loop, reg, False) for v, reg in regs.items()},
             **{f"{v}/f_replay": functools.partial(f_loop, v) for v in regs}}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in loops}
    for run in loops.values():
        run()  # warm-up
    for _ in range(rounds):
        for key, run in loops.items():
            times[key].append(run())
    ops_alone = min(o for o, _ in times["ops_alone"])
    rows = []
    for v in variants:
        ops_between = min(o for o, _ in times[f"{v}/both"])
        rows.append({"variant": v, "iterations": iterations, "rounds": rounds,
                     "ops_alone_s": ops_alone, "ops_between_s": ops_between,
                     "ops_slowdown_s": ops_between - ops_alone,
                     "penalty_alone_s": min(p for _, p in times[f"{v}/penalty_alone"]),
                     "penalty_between_s": min(p for _, p in times[f"{v}/both"]),
                     "f_replay_s": min(p for _, p in times[f"{v}/f_replay"]),
                     "times_s": {k: times[k] for k in ("ops_alone", f"{v}/both", f"{v}/penalty_alone",
                                                       f"{v}/f_replay")}})
        r = rows[-1]
        # what the loop costs beyond the solver work alone and f's replay: the EquiReg excess per
        # iteration the solver table would see from this loop
        r["excess_s"] = r["ops_between_s"] + r["penalty_between_s"] - r["ops_alone_s"] - r["f_replay_s"]
    return rows


def interference_markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = ["# Pixel DAPS's Langevin loop: where the EquiReg excess goes", "",
             f"Command: `{meta['command']}`; batch {meta['batch']}, {rows[0]['iterations']} iterations "
             f"per loop, fastest of {rows[0]['rounds']} interleaved round(s), {meta['device']}, "
             f"{meta['threads']} thread(s), {meta['inputs']}. Notes: {'; '.join(meta['notes'])}.", "",
             "Per Langevin iteration (ms): the solver's own work (closed-form data gradient, update, "
             "noise) alone and between penalty evaluations (slowdown: the difference); the penalty "
             "(forward + backward) alone and between the solver's work; the replay of its two f calls "
             "alone (what the solver table credits as f); excess: solver work + penalty in the loop − "
             "solver work alone − f replay, i.e. the loop's EquiReg excess per iteration.", "",
             "| f | solver work alone | solver work between penalties | slowdown | penalty alone | "
             "penalty in the loop | f replay | excess |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {1e3 * r['ops_alone_s']:.3f} | {1e3 * r['ops_between_s']:.3f} | "
                     f"{1e3 * r['ops_slowdown_s']:+.3f} | {1e3 * r['penalty_alone_s']:.3f} | "
                     f"{1e3 * r['penalty_between_s']:.3f} | {1e3 * r['f_replay_s']:.3f} | "
                     f"{1e3 * r['excess_s']:+.3f} |")
    return "\n".join(lines) + "\n"


def _pct(v: float) -> str:
    return f"{100 * v:+.1f}%"


def _mib(v: int | str | None) -> str:
    if v is None:
        return "–"
    return v if isinstance(v, str) else f"{v / 2**20:.1f}"


def markdown(rows: list[dict[str, Any]], units: dict[str, tuple[float, float]], meta: dict[str, Any]) -> str:
    lines = ["# Per-step cost (Fashion-MNIST priors)", "",
             f"Command: `{meta['command']}`; batch {meta['batch']}, {meta['steps']} steps, fastest of "
             f"{meta['repeats']} interleaved run(s), {meta['device']}, {meta['threads']} thread(s), "
             f"{meta['inputs']}.",
             f"Notes: {'; '.join(meta['notes'])}. ReSample runs with "
             f"{SPEED_OPTIONS['resample']} (shorter hard-consistency loops than its defaults, entered "
             "every 5 steps). Rows of one solver whose denoiser/decoder/encoder calls are the same work "
             "(count, grad mode, shapes) share one necessary time, the fastest of their replays.", "",
             f"Targets: solver overhead (step time / replayed network time − 1) ≤ "
             f"{OVERHEAD_TARGET:.0%}; EquiReg excess (extra step time beyond its own f evaluations, "
             f"relative to the base step) ≤ {EQUIREG_TARGET:.0%}. Peak memory: {meta['memory_kind']}.", "",
             "## Unit costs (ms, batch {})".format(meta["batch"]), "",
             "| network | forward | forward + backward |", "|---|---|---|"]
    for key, (fwd, fb) in units.items():
        lines.append(f"| {key} | {1e3 * fwd:.2f} | {1e3 * fb:.2f} |")
    lines += ["", "## Solvers", "",
              "| prior | solver | EquiReg | step (ms) | necessary (ms) | overhead | f (ms) | vs base | "
              "EquiReg excess | outside networks + autograd | peak memory (MiB) | calls (grad/no-grad) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        overhead = r["overhead"]
        ok = "✓" if overhead <= OVERHEAD_TARGET else "✗"
        vs, excess = "–", "–"
        if "equireg_excess" in r:
            vs = f"{r['vs_base']:.2f}×"
            ex = r["equireg_excess"]
            excess = f"{_pct(ex)} {'✓' if ex <= EQUIREG_TARGET else '✗'}"
        calls = ", ".join(f"{k} {g}/{n}" for k, (g, n) in r["calls"].items())
        lines.append(f"| {r['prior']} | {r['solver']} | {r['variant']} | {1e3 * r['step_s']:.1f} | "
                     f"{1e3 * r['necessary_step_s']:.1f} | {_pct(overhead)} {ok} | "
                     f"{1e3 * r['f_step_s']:.1f} | "
                     f"{vs} | {excess} | {100 * r['rest_share']:.1f}% | {_mib(r['peak_bytes'])} | {calls} |")
    return "\n".join(lines) + "\n"


def _cli_inputs(args: argparse.Namespace, batch: int) -> tuple[torch.device, Models, torch.Tensor, Any,
                                                             torch.Tensor, dict[str, Any]]:
    """Threads, malloc, models, held-out images and their sr4 measurement for one CLI run; the
    last item holds the meta fields every output shares."""
    torch.set_num_threads(args.threads)
    malloc_note = apply_malloc_option(args)
    device = torch.device(args.device)
    models, notes = _random_models(device)
    images, inputs = _images(batch, device)
    op = get_task("sr4").build().to(device)
    y = measure(op, images, seed=1)
    meta = {"batch": batch, "device": str(device), "threads": args.threads,
            "inputs": inputs + ", sr4 measurement", "notes": [*(notes or ["trained weights"]), malloc_note]}
    return device, models, images, op, y, meta


def _emit(text: str, out: Path | None, name: str, t0: float) -> None:
    """Print a report, write it to ``out/name`` if asked, and log the wall time since ``t0``."""
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    print(f"# wall time {time.perf_counter() - t0:.1f} s", file=sys.stderr)


def main(argv: Sequence[str] | None = None, results: dict[str, Any] | None = None) -> int:
    """CLI entry point; ``results`` (a dict), if given, receives the rows and unit costs (for tests)."""
    parser = argparse.ArgumentParser(prog="python -m bench.speed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {QUICK} (explicit options override)")
    parser.add_argument("--solvers", nargs="+", default=None, help=f"default: all of {list(SOLVER_NAMES)}")
    parser.add_argument("--priors", nargs="+", default=None, help=f"default: {list(PRIORS)}")
    parser.add_argument("--variants", nargs="+", default=None,
                        help=f"EquiReg variants to time, of {list(SPEED_VARIANTS)} (default: none equi; "
                             "'trivial' times the Equi penalty with f(z) = z: EquiReg's fixed cost; with "
                             "--interference: the penalties to probe, default equi trivial)")
    parser.add_argument("--interference", action="store_true",
                        help="instead of the solver table, probe whether f's evaluations slow down the "
                             "solver's own ops in pixel DAPS's Langevin loop (interference_probe; writes "
                             "bench_speed_interference.md)")
    parser.add_argument("--iterations", type=int, default=None,
                        help="Langevin iterations per probe loop (--interference only; default 100, "
                             "DAPS's per step; 5 with --quick)")
    parser.add_argument("--batch", type=int, default=None, help="default 8")
    parser.add_argument("--steps", type=int, default=None, help="default 10")
    parser.add_argument("--repeats", type=int, default=None, help="default 3")
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--threads", type=int, default=1)
    add_malloc_option(parser)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write bench_speed.md here")
    args = parser.parse_args(argv)

    quick = QUICK if args.quick else {}
    if args.interference:
        clash = [name for name, value in (("--solvers", args.solvers), ("--priors", args.priors),
                                          ("--steps", args.steps), ("--no-memory", args.no_memory))
                 if value]
        if clash:
            parser.error(f"--interference probes the pixel DAPS loop only; {', '.join(clash)} do(es) not "
                         "apply to it")
        return _interference_main(args, quick, argv, results)
    if args.iterations is not None:
        parser.error("--iterations applies only with --interference")
    solvers = check_names(args.solvers or quick.get("solvers") or list(SOLVER_NAMES), SOLVER_NAMES, "solvers")
    priors = check_names(args.priors or list(PRIORS), PRIORS, "priors")
    variants = check_names(args.variants or ["none", "equi"], SPEED_VARIANTS, "variants")
    if "none" not in variants:
        parser.error("--variants must include 'none' (the base every EquiReg figure is relative to)")
    batch = args.batch or quick.get("batch") or 8
    steps = args.steps or quick.get("steps") or 10
    repeats = args.repeats or quick.get("repeats") or 3
    if min(batch, steps, repeats, args.threads) < 1:
        parser.error("--batch, --steps, --repeats and --threads must be >= 1")
    t0 = time.perf_counter()
    device, models, images, op, y, common = _cli_inputs(args, batch)
    units = measure_units(models, priors, variants, batch, max(repeats, 3), args.alpha, device)
    rows = []
    for prior in priors:
        for solver in solvers:
            try:
                solver_rows = bench_solver(models, prior, solver, variants, y, op, steps, repeats, args.alpha,
                                           not args.no_memory)
            except (TypeError, ValueError, RuntimeError) as err:
                print(f"# {prior}/{solver}: not run ({err})", file=sys.stderr)
                continue
            rows += solver_rows
            for row in solver_rows:
                print(f"# {prior}/{solver}/{row['variant']}: {1e3 * row['step_s']:.1f} ms/step, overhead "
                      f"{_pct(row['overhead'])}", file=sys.stderr, flush=True)
    meta = {"command": "python -m bench.speed " + " ".join(sys.argv[1:] if argv is None else argv),
            **common, "steps": steps, "repeats": repeats,
            "memory_kind": ("skipped" if args.no_memory else
                            "torch.cuda.max_memory_allocated growth" if device.type == "cuda" else
                            "peak RSS growth of a forked child (getrusage ru_maxrss)")}
    _emit(markdown(rows, units, meta), args.out, "bench_speed.md", t0)
    if results is not None:
        results.update({"rows": rows, "units": units, "meta": meta})
    return 0


def _interference_main(args: argparse.Namespace, quick: dict[str, Any], argv: Sequence[str] | None,
                       results: dict[str, Any] | None) -> int:
    variants = check_names(args.variants or ["equi", "trivial"], SPEED_VARIANTS, "variants")
    if "none" in variants:
        raise ValueError("--interference probes penalties; 'none' has none (choose from equi, equicon, "
                         "trivial)")
    batch = args.batch or quick.get("batch") or 8
    repeats = args.repeats or quick.get("repeats") or 5
    iterations = args.iterations or (5 if args.quick else 100)
    if min(batch, repeats, iterations, args.threads) < 1:
        raise ValueError("--batch, --repeats, --iterations and --threads must be >= 1")
    t0 = time.perf_counter()
    _device, models, images, op, y, common = _cli_inputs(args, batch)
    rows = interference_probe(models, images, y, op, variants, iterations, repeats, args.alpha)
    meta = {"command": "python -m bench.speed " + " ".join(sys.argv[1:] if argv is None else argv), **common}
    _emit(interference_markdown(rows, meta), args.out, "bench_speed_interference.md", t0)
    if results is not None:
        results.update({"interference": rows, "meta": meta})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
