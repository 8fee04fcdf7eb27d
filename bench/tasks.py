"""Inverse problems, priors and EquiReg variants of the Fashion-MNIST benchmarks (32x32 images).

Tasks are the DPS/EquiReg paper tasks, scaled from 256 px to 32 px (factor s = 32/256 = 1/8):

============================  =========================================================================
task                          operator at 32 px (256 px original)
============================  =========================================================================
``sr4``                       bicubic down-sampling x4, 32 -> 8 (256 -> 64): the factor is kept
``gaussian_deblur``           Gaussian blur, kernel 7x7, std 0.375 (61x61, std 3.0: both times s, kernel
                              rounded to the nearest odd size)
``motion_deblur``             random motion kernel 7x7, intensity 0.5, seed 0 (61x61, intensity 0.5)
``box_inpaint``               centred 16x16 box removed (128x128 of 256: half the side)
``random_inpaint``            70% of the pixels removed, mask seed 0 (same fraction)
``phase_retrieval``           Fourier magnitude with oversampling 2.0 (same)
============================  =========================================================================

Every task adds Gaussian noise with ``sigma_y = 0.05`` (images in [-1, 1]). The box is centred (the
DPS configs draw its position at random; a fixed box keeps every image's problem the same).

Priors (:func:`load_prior`): ``pixel`` (the EDM denoiser on (B, 1, 32, 32) images) and ``latent``
(the EDM denoiser on the (B, 4, 8, 8) latents of the KL autoencoder, with its ``decode``/``encode``).

EquiReg variants (:func:`make_equireg`), hflip group (Fashion-MNIST garments are close to mirror
symmetric; a 90 degree rotation is not a symmetry of the data):

- ``none``: no regularizer.
- ``equi``: pixel prior -> f = the trained MPE CNN feature map (``weights/fashion_mpe.safetensors``);
  latent prior -> f = the decoder (latent -> image), the paper's latent ``Equi``.
- ``equicon``: f must map back into x's own space. Latent prior -> f = encode(decode(z)) (the paper's
  ``EquiCon``); pixel prior -> f = decode(encode(x)), the autoencoder's image round trip (the
  pixel-space counterpart: a non-equivariant projection onto the learned image manifold).
"""

from __future__ import annotations

import argparse
import ctypes
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from samplers.equireg import EquiReg, decoder_mpe, encoder_after_decoder_mpe
from samplers.operators import GaussianNoise, make
from samplers.operators.base import Operator

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest value glibc accepts on 64-bit systems

IMAGE_SIZE = 32
REFERENCE_SIZE = 256
SCALE = IMAGE_SIZE / REFERENCE_SIZE
SIGMA_Y = 0.05


def scaled_odd_kernel(size: int, scale: float = SCALE) -> int:
    """``size * scale`` rounded to the nearest odd integer (at least 3): blur kernels stay centred."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    target = size * scale
    k = 2 * round((target - 1) / 2) + 1
    return max(3, int(k))


@dataclass(frozen=True)
class TaskSpec:
    """One inverse problem: operator name and parameters, and the reference step sizes for it.

    ``dps_step_size`` is DPS's zeta from its task configs; ``daps_lr`` is DAPS's initial Langevin step
    size from its pixel task configs (1e-4 SR/Gaussian deblur/random inpainting, 5e-5 motion deblur,
    box inpainting and phase retrieval).
    """

    name: str
    operator: str
    params: dict[str, Any] = field(default_factory=dict)
    dps_step_size: float = 1.0
    description: str = ""
    daps_lr: float = 1e-4

    def build(self) -> Operator:
        return make(self.operator, **self.params)


TASKS: dict[str, TaskSpec] = {
    t.name: t for t in (
        TaskSpec("sr4", "super_resolution", {"factor": 4}, 0.3, "SR x4 (32 -> 8)"),
        TaskSpec("gaussian_deblur", "gaussian_blur",
                 {"kernel_size": scaled_odd_kernel(61), "sigma": 3.0 * SCALE}, 0.3,
                 f"Gaussian deblur ({scaled_odd_kernel(61)}x{scaled_odd_kernel(61)}, std {3.0 * SCALE})"),
        TaskSpec("motion_deblur", "motion_blur",
                 {"kernel_size": scaled_odd_kernel(61), "intensity": 0.5, "seed": 0}, 0.3,
                 f"motion deblur ({scaled_odd_kernel(61)}x{scaled_odd_kernel(61)}, intensity 0.5)", 5e-5),
        TaskSpec("box_inpaint", "inpainting",
                 {"mask_type": "box", "box_size": (16, 16), "position": (8, 8),
                  "image_size": (IMAGE_SIZE, IMAGE_SIZE)}, 0.5, "box inpainting (centred 16x16)", 5e-5),
        TaskSpec("random_inpaint", "inpainting",
                 {"mask_type": "random", "fraction": 0.7, "seed": 0,
                  "image_size": (IMAGE_SIZE, IMAGE_SIZE)}, 0.5, "random inpainting (70%)"),
        TaskSpec("phase_retrieval", "phase_retrieval", {"oversample": 2.0}, 1.0,
                 "phase retrieval (oversample 2.0)", 5e-5),
    )
}

SOLVER_NAMES: tuple[str, ...] = ("dps", "psld", "resample", "sitcom", "daps")
#: The prior each solver runs on: PSLD and ReSample need an encoder/decoder pair.
SOLVER_PRIOR: dict[str, str] = {"dps": "pixel", "psld": "latent", "resample": "latent",
                                "sitcom": "pixel", "daps": "pixel"}
VARIANTS: tuple[str, ...] = ("none", "equi", "equicon")
PRIORS: tuple[str, ...] = ("pixel", "latent")


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return TASKS[name]


def check_names(values: list[str] | tuple[str, ...], valid: tuple[str, ...] | list[str],
                what: str) -> list[str]:
    """Reject unknown names (listing the valid ones) and duplicates; keep the given order."""
    values = list(values)
    bad = [v for v in values if v not in valid]
    if bad:
        raise ValueError(f"unknown {what} {bad}; valid {what}: {', '.join(valid)}")
    if len(set(values)) != len(values):
        raise ValueError(f"duplicate {what} in {values}")
    if not values:
        raise ValueError(f"at least one {what[:-1] if what.endswith('s') else what} is needed")
    return values


def solver_options_for(solver: str, task: str) -> dict[str, Any]:
    """Per-task solver options: DPS's reference step size and DAPS's reference Langevin step size per
    task; PSLD without its gluing term (gamma 0) for phase retrieval, whose operator has no
    pseudo-inverse to glue with; every other case the solver's defaults (PSLD's box-inpainting weights
    gamma 1e-2, omega 0.1 are not used: tuned for 1000 steps, at 25 steps they leave the measurement
    unfitted, residual 0.28 against 0.09)."""
    if solver == "dps":
        return {"step_size": get_task(task).dps_step_size}
    if solver == "daps":
        # DAPS's Langevin data step multiplies A^T A's top mode by 1 - 2 lr lambda / tau^2: with the
        # default 1e-4 it is -1.24 for motion blur (lambda 1.119), and the chain blows up
        return {"lr": get_task(task).daps_lr}
    if solver == "psld" and task == "phase_retrieval":
        return {"gamma": 0.0}
    return {}


def measurement_seed(seed: int) -> int:
    """The noise seed of every task's measurement in a run with solver seed ``seed``.

    The same for every task, so a task's measurement (and so its results) does not depend on which
    other tasks share the process: a run split into one process per task gives the numbers of the
    single full run. (It used to be ``seed + 1000 * (i + 1)`` for the i-th task of ``--tasks``; every
    64-image part in docs/ was a one-task process, i.e. already used ``seed + 1000``.)
    """
    return int(seed) + 1000


def measure(op: Operator, x: torch.Tensor, seed: int, sigma_y: float = SIGMA_Y) -> torch.Tensor:
    """y = A(x) + sigma_y * noise, with noise from a CPU generator seeded by ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        return GaussianNoise(sigma_y)(op(x), generator=gen)


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """EDM/Karras noise levels, ``steps`` decreasing values followed by 0 (length steps + 1)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sig = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sig, sig.new_zeros(1)]).to(dtype)


@dataclass
class Prior:
    """A diffusion prior with the maps between its space and images in [-1, 1].

    ``decode``/``encode`` are None for a pixel prior (identity); ``shape`` is one sample's shape.
    """

    name: str
    model: torch.nn.Module
    shape: tuple[int, ...]
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None
    sigma_max: float = 80.0
    sigma_min: float = 0.002

    def to_image(self, x0: torch.Tensor) -> torch.Tensor:
        return x0 if self.decode is None else self.decode(x0)


@dataclass
class Models:
    """Everything the benchmarks need: priors by name, the MPE CNN and the autoencoder."""

    priors: dict[str, Prior]
    mpe: torch.nn.Module | None
    autoencoder: torch.nn.Module | None


def _missing(what: str, err: Exception) -> FileNotFoundError:
    return FileNotFoundError(f"{what} is not available: {err}. Train it first (docs/training.md), or "
                             f"leave out the solvers/variants that need it.")


def load_models(priors: list[str] | tuple[str, ...], need_mpe: bool, need_autoencoder: bool,
                device: torch.device | str = "cpu") -> Models:
    """Load the trained Fashion-MNIST models the run needs; a missing file raises FileNotFoundError
    naming it and what needs it."""
    from samplers.models import fashion

    ae = None
    if need_autoencoder or "latent" in priors:
        try:
            ae = fashion.load_autoencoder(device=device)
        except FileNotFoundError as err:
            raise _missing("the autoencoder (latent prior, PSLD/ReSample and pixel EquiCon)", err) from None
    out: dict[str, Prior] = {}
    for name in priors:
        try:
            if name == "pixel":
                model = fashion.load_pixel_prior(device=device)
                out[name] = Prior("pixel", model, (1, IMAGE_SIZE, IMAGE_SIZE),
                                  sigma_max=model.sigma_max, sigma_min=model.sigma_min)
            elif name == "latent":
                model = fashion.load_latent_prior(device=device, autoencoder=ae)
                out[name] = Prior("latent", model, (4, IMAGE_SIZE // 4, IMAGE_SIZE // 4), ae.decode,
                                  ae.encode, sigma_max=model.sigma_max, sigma_min=model.sigma_min)
            else:
                raise ValueError(f"unknown prior {name!r}; valid priors: {', '.join(PRIORS)}")
        except FileNotFoundError as err:
            raise _missing(f"the {name} prior", err) from None
    mpe = None
    if need_mpe:
        try:
            mpe = fashion.load_mpe(device=device)
        except FileNotFoundError as err:
            raise _missing("the MPE CNN (pixel Equi)", err) from None
    return Models(out, mpe, ae)


def make_equireg(variant: str, prior: Prior, models: Models, alpha: float, seed: int = 0) -> EquiReg | None:
    """The EquiReg of ``variant`` for ``prior`` (module docstring); None for ``none``."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EquiReg variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    if variant == "none":
        return None
    ae = models.autoencoder
    if prior.name == "pixel":
        if variant == "equi":
            if models.mpe is None:
                raise ValueError("pixel Equi needs the MPE CNN (models.mpe is None)")
            return EquiReg(models.mpe, group="hflip", form="equi", alpha=alpha, seed=seed)
        if ae is None:
            raise ValueError("pixel EquiCon needs the autoencoder (models.autoencoder is None)")
        return EquiReg(lambda x: ae.decode(ae.encode(x)), group="hflip", form="equicon", alpha=alpha,
                       seed=seed)
    if prior.decode is None or prior.encode is None:
        raise ValueError(f"the {prior.name} prior has no decode/encode for latent EquiReg")
    if variant == "equi":
        return EquiReg(decoder_mpe(prior.decode), group="hflip", form="equi", alpha=alpha, seed=seed)
    return EquiReg(encoder_after_decoder_mpe(prior.encode, prior.decode), group="hflip", form="equicon",
                   alpha=alpha, seed=seed)


def initial_noise(prior: Prior, n: int, sigma0: float, seed: int) -> torch.Tensor:
    """x_T = sigma0 * N(0, I) of shape (n, *prior.shape), the same for every solver with this seed."""
    gen = torch.Generator().manual_seed(int(seed))
    return sigma0 * torch.randn((n, *prior.shape), generator=gen)


def run_solver_on(solver: str, prior: Prior, op: Operator, y: torch.Tensor, steps: int,
                  equireg: EquiReg | None, seed: int, options: dict[str, Any] | None = None,
                  callback: Callable[[dict[str, Any]], Any] | None = None) -> torch.Tensor:
    """Run ``solver`` for ``steps`` steps from the seeded x_T; returns images (B, C, H, W) in [-1, 1].

    ``callback`` is the sampler callback (called every step with ``x``, ``i``, ``sigma``, ``denoised``).
    """
    from samplers.solvers import get_solver

    sigmas = karras_sigmas(steps, prior.sigma_min, prior.sigma_max)
    x = initial_noise(prior, y.shape[0], float(sigmas[0]), seed)
    fn = get_solver(solver)
    out = fn(prior.model, x, sigmas, extra_args={}, callback=callback, disable=True, operator=op,
             measurement=y, decode=prior.decode, encode=prior.encode, equireg=equireg, sigma_y=SIGMA_Y,
             seed=seed, **(options or {}))
    with torch.no_grad():
        img = prior.to_image(out.detach())
    return img.clamp(-1.0, 1.0)


def residual_rms(op: Operator, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS of A(x) - y, shape (B,); about sigma_y for a reconstruction that fits y."""
    with torch.no_grad():
        r = (op(x) - y).flatten(1)
    return r.pow(2).mean(dim=1).sqrt()


def mean_ci95(values: torch.Tensor | list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% t-interval of the mean (half-width 0 for one value)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() == 0:
        raise ValueError("mean_ci95 needs at least one value")
    mean = float(v.mean())
    if v.numel() < 2:
        return mean, 0.0
    try:
        from scipy.stats import t as student_t

        q = float(student_t.ppf(0.975, v.numel() - 1))
    except ImportError:  # scipy is in the bench extra; the normal quantile is the large-n limit
        q = 1.959964
    return mean, q * float(v.std(unbiased=True)) / math.sqrt(v.numel())


def keep_freed_cpu_memory(device: str | torch.device) -> str:
    """On Linux/glibc CPU runs, let malloc keep freed memory for reuse; returns a note for the output.

    PyTorch's CPU allocator does not cache: every tensor is malloc'ed and freed. With glibc's
    defaults, blocks above the mmap threshold are mapped afresh and freed heap tops are trimmed, so
    each solver step's activations are zero-filled page by page again (about 270,000 minor page
    faults in one latent SITCOM + EquiReg step at batch 8, and a fifth of its time). Raising the mmap
    threshold to its maximum and turning trimming off removes those faults; numbers are unchanged.
    The CUDA caching allocator already does the equivalent on GPUs, so nothing is done there.
    """
    if torch.device(device).type != "cpu":
        return "malloc: unchanged (not a CPU run)"
    if not sys.platform.startswith("linux"):
        return "malloc: unchanged (not Linux)"
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        ok = libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    except (OSError, AttributeError):
        return "malloc: unchanged (no glibc mallopt)"
    if not ok:
        return "malloc: mallopt refused the settings; unchanged"
    return "malloc: glibc keeps freed memory (mmap threshold 32 MiB, no trimming)"


def add_malloc_option(parser: argparse.ArgumentParser) -> None:
    """The ``--default-malloc`` switch of the benchmark CLIs (see :func:`keep_freed_cpu_memory`)."""
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's malloc settings alone (by default CPU runs keep freed memory "
                             "for reuse, see bench.tasks.keep_freed_cpu_memory)")


def apply_malloc_option(args: argparse.Namespace) -> str:
    """Apply ``--default-malloc`` / :func:`keep_freed_cpu_memory` for ``args.device``; log and return
    the note."""
    note = ("malloc: unchanged (--default-malloc)" if args.default_malloc
            else keep_freed_cpu_memory(args.device))
    print(f"# {note}", file=sys.stderr, flush=True)
    return note
