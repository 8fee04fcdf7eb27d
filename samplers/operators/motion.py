"""Random motion-blur kernels (the generator DPS uses, LeviBorodenko/motionblur), seeded.

The kernel is the image of a random camera trajectory. Its construction, re-implemented here with a seeded
``numpy.random.Generator`` so that a seed always gives the same kernel (the reference is unseeded):

1. A canvas twice the kernel size in each dimension (anti-aliasing by super-sampling), diagonal ``D``.
2. Path length ``L = 0.75 D (U(0, 1) + U(0, I^2))`` for intensity ``I`` in [0, 1].
3. Step lengths ``Beta(1, 30) (1 - I + 0.1) D``, each shorter than ``L``, drawn until they add up to ``L``.
4. A maximal angle ``U(0, I pi)``, a jitter probability ``Beta(2, 20)``, a first angle ``U(-max, max)`` and
   then angles ``triangular(0, I max, max + 0.1)`` whose sign flips from the previous one with the jitter
   probability.
5. The path (cumulative sum of the steps as complex increments) is centred on its centre of mass, rotated by
   ``U(0, pi)`` and moved to the canvas centre.
6. It is drawn as a line of width ``int(D / 150)``, blurred with a Gaussian of radius ``int(0.01 D)``,
   Lanczos-resized to the kernel size and normalised to sum one.

Deviations from the reference, both for robustness: step lengths are drawn directly from the truncated Beta
distribution (the same distribution as its rejection loop, without the loop), and a zero previous angle
counts as positive (the reference would then freeze every later angle at zero).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import check_float, check_int, check_odd_kernel_size
from .blur import Blur

_EPS = 0.1  # the reference's "eps" added to the step scale and the maximal angle


def _steps(rng: np.random.Generator, intensity: float, diagonal: float) -> np.ndarray:
    path_length = 0.75 * diagonal * (rng.uniform() + rng.uniform(0.0, intensity ** 2))
    scale = (1.0 - intensity + _EPS) * diagonal
    # Beta(1, 30) has CDF 1 - (1 - t)^30; a step is kept only when scale * t < path_length, so draw t from
    # that truncated law by inverting the CDF on [0, F(path_length / scale)].
    t_max = min(1.0, path_length / scale)
    f_max = 1.0 - (1.0 - t_max) ** 30
    steps: list[float] = []
    total = 0.0
    while total < path_length:
        u = rng.uniform(0.0, f_max)
        step = -scale * math.expm1(math.log1p(-u) / 30.0)  # = scale (1 - (1 - u)^(1/30)), precise for small u
        if 0.0 < step < path_length:
            steps.append(step)
            total += step
    return np.asarray(steps)


def _angles(rng: np.random.Generator, intensity: float, count: int) -> np.ndarray:
    max_angle = rng.uniform(0.0, intensity * math.pi)
    jitter = rng.beta(2, 20)
    angles = [rng.uniform(-max_angle, max_angle)]
    while len(angles) < count:
        angle = rng.triangular(0.0, intensity * max_angle, max_angle + _EPS)
        previous_sign = 1.0 if angles[-1] >= 0 else -1.0
        flip = rng.uniform() < jitter
        angles.append(-previous_sign * angle if flip else previous_sign * angle)
    return np.asarray(angles)


def motion_kernel(kernel_size: int = 61, intensity: float = 0.5, seed: int = 0) -> torch.Tensor:
    """A (k, k) float32 motion-blur kernel (non-negative, sum one); the same seed gives the same kernel."""
    from PIL import Image, ImageDraw, ImageFilter  # pillow ships with ComfyUI; imported only when needed

    k = check_odd_kernel_size(kernel_size)
    intensity = check_float(intensity, "motion_blur intensity", minimum=0.0, maximum=1.0)
    seed = check_int(seed, "motion_blur seed", minimum=0)
    rng = np.random.default_rng(seed)

    canvas = 2 * k
    diagonal = math.hypot(canvas, canvas)
    steps = _steps(rng, intensity, diagonal)
    if len(steps) == 0:  # a zero path length (probability ~0): a single point
        steps = np.zeros(1)
    angles = _angles(rng, intensity, len(steps))
    path = np.cumsum(steps * np.exp(1j * angles))
    path = path - path.mean()
    path = path * np.exp(1j * rng.uniform(0.0, math.pi))
    path = path + (canvas + 1j * canvas) / 2.0

    image = Image.new("L", (canvas, canvas))
    draw = ImageDraw.Draw(image)
    draw.line([(float(p.real), float(p.imag)) for p in path], fill=255, width=max(1, int(diagonal / 150)))
    image = image.filter(ImageFilter.GaussianBlur(radius=int(diagonal * 0.01)))
    image = image.resize((k, k), resample=Image.LANCZOS)
    kernel = np.asarray(image, dtype=np.float64)
    total = kernel.sum()
    if total <= 0:  # a path too faint to survive the 8-bit resize (tiny kernels): fall back to no blur
        kernel = np.zeros((k, k))
        kernel[k // 2, k // 2] = 1.0
        total = 1.0
    return torch.as_tensor(kernel / total, dtype=torch.float32)


class MotionBlur(Blur):
    """DPS motion deblurring operator: blur by a seeded random motion kernel (:func:`motion_kernel`).

    :param kernel_size: odd kernel size (default 61, as DPS).
    :param intensity: trajectory intensity in [0, 1] (0: straight line; default 0.5, as DPS).
    :param seed: seed of the trajectory (default 0); the same seed gives the same kernel.
    """

    name = "motion_blur"

    def __init__(self, kernel_size: int = 61, intensity: float = 0.5, seed: int = 0) -> None:
        super().__init__(motion_kernel(kernel_size, intensity, seed))
        self.kernel_size = kernel_size
        self.intensity = float(intensity)
        self.seed = seed

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, intensity={self.intensity}, seed={self.seed}"
