"""What the Operator, Simulate Measurement, Measurement from Image, Target Latent and Metrics nodes compute.

Pure PyTorch (no ComfyUI import), so that it is tested without ComfyUI; the node classes in
:mod:`nodes.measurement` and :mod:`nodes.metrics` only declare sockets and call these functions. Inputs
and outputs use ComfyUI's conventions (IMAGE (B, H, W, C) in [0, 1], MASK (B, H, W) with 1 = fill in);
internally images are (B, C, H, W) in [-1, 1] as in the core library.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

import torch

# Relative imports only: inside ComfyUI a bare `import samplers` would find ComfyUI's comfy/samplers.py.
from ..samplers import metrics as core_metrics
from ..samplers import operators as core_ops
from . import convert
from .types import NODE_OPERATORS, NOISE_NAMES, Measurement, OperatorSpec

MASK_TYPES = ("box", "random")
BOX_POSITIONS = ("random", "center")
SR_FACTORS = ("2", "4", "8")


# ---------------------------------------------------------------------------------------------------
# Operator node
# ---------------------------------------------------------------------------------------------------


def operator_spec(
    operator: str,
    *,
    sr_factor: str | int = "4",
    kernel_size: int = 61,
    blur_sigma: float = 3.0,
    motion_intensity: float = 0.5,
    seed: int = 0,
    mask_type: str = "box",
    box_size: int = 0,
    box_position: str = "random",
    random_fraction: float = 0.7,
    pr_oversample: float = 2.0,
    hdr_scale: float = 2.0,
    mask: torch.Tensor | None = None,
) -> OperatorSpec:
    """The Operator node: an :class:`OperatorSpec` from the node's widgets (only the chosen operator's
    parameters are used) and an optional ComfyUI MASK (1 = region to fill in) for inpainting."""
    if operator not in NODE_OPERATORS:
        raise ValueError(f"operator: unknown operator {operator!r}; valid: {', '.join(NODE_OPERATORS)}")
    params: dict[str, Any] = {}
    observed = None
    if operator == "super_resolution":
        if str(sr_factor) not in SR_FACTORS:
            raise ValueError(f"sr_factor: expected one of {', '.join(SR_FACTORS)}, got {sr_factor!r}")
        params["factor"] = int(sr_factor)
    elif operator == "gaussian_blur":
        params.update(kernel_size=_odd_kernel(kernel_size), sigma=float(blur_sigma))
    elif operator == "motion_blur":
        params.update(kernel_size=_odd_kernel(kernel_size), intensity=float(motion_intensity), seed=int(seed))
    elif operator == "inpainting":
        if mask is not None:
            observed = convert.comfy_mask_to_observed(mask, what="mask")
        else:
            if mask_type not in MASK_TYPES:
                raise ValueError(f"mask_type: expected one of {', '.join(MASK_TYPES)}, got {mask_type!r}")
            if box_position not in BOX_POSITIONS:
                raise ValueError(
                    f"box_position: expected one of {', '.join(BOX_POSITIONS)}, got {box_position!r}"
                )
            params.update(mask_type=mask_type, seed=int(seed))
            if mask_type == "box":
                if int(box_size) < 0:
                    raise ValueError(
                        f"box_size: expected 0 (half the image) or a positive size, got {box_size}"
                    )
                if int(box_size) > 0:
                    params["box_size"] = (int(box_size), int(box_size))
                if box_position == "center":
                    params["position"] = "center"  # resolved by OperatorSpec.build for the image size
            else:
                params["fraction"] = float(random_fraction)
    elif operator == "phase_retrieval":
        params["oversample"] = float(pr_oversample)
    elif operator == "hdr":
        params["scale"] = float(hdr_scale)
    return OperatorSpec(operator, params, observed)


def _odd_kernel(kernel_size: int) -> int:
    k = int(kernel_size)
    if k <= 0 or k % 2 == 0:
        raise ValueError(f"kernel_size: expected a positive odd number of pixels (e.g. 61), got {k}")
    return k


def check_image_for_operator(
    spec: OperatorSpec, image_size: tuple[int, int], batch_size: int, what: str = "image"
) -> None:
    """Size checks between a clean image of ``image_size`` and the operator that will measure it."""
    h, w = image_size
    if spec.name == "super_resolution":
        f = spec.params["factor"]
        if h % f or w % f:
            raise ValueError(
                f"{what}: size {h}x{w} (H x W) is not divisible by the super-resolution factor {f}; "
                f"crop or resize the image to multiples of {f}"
            )
    if spec.name in ("gaussian_blur", "motion_blur"):
        k = spec.params["kernel_size"]
        if k // 2 >= min(h, w):
            raise ValueError(
                f"{what}: size {h}x{w} (H x W) is too small for kernel_size {k} (the kernel half-size "
                f"{k // 2} must be smaller than the image); use a smaller kernel_size"
            )
    if spec.name == "inpainting" and spec.mask is not None:
        if tuple(spec.mask.shape[-2:]) != (h, w):
            raise ValueError(
                f"mask: the operator's MASK has size {tuple(spec.mask.shape[-2:])} (H, W) but the "
                f"{what} has size {(h, w)}; use a mask drawn on this image"
            )
        if spec.mask.shape[0] not in (1, batch_size):
            raise ValueError(
                f"mask: the operator's MASK has batch size {spec.mask.shape[0]} but the {what} batch "
                f"has {batch_size} images (expected 1 mask, or one per image)"
            )
    if spec.name == "inpainting" and spec.mask is None and "box_size" in spec.params:
        b = spec.params["box_size"][0]
        if b > min(h, w):
            raise ValueError(
                f"box_size: a {b}x{b} box does not fit in the {what} of size {h}x{w}; use a smaller "
                f"box_size (0 = half the image)"
            )


# ---------------------------------------------------------------------------------------------------
# Noise and measurements
# ---------------------------------------------------------------------------------------------------


def make_noise(noise: str, sigma: float, poisson_rate: float) -> Any:
    if noise not in NOISE_NAMES:
        raise ValueError(f"noise: expected one of {', '.join(NOISE_NAMES)}, got {noise!r}")
    if noise == "gaussian":
        return core_ops.make_noise("gaussian", sigma=float(sigma))
    if noise == "poisson":
        return core_ops.make_noise("poisson", rate=float(poisson_rate))
    return core_ops.make_noise("none")


def noise_sigma_y(noise: str, sigma: float, poisson_rate: float, y: torch.Tensor) -> float:
    """Standard deviation of the measurement noise on the [-1, 1] scale.

    Gaussian: ``sigma``. Poisson (counts ``255 * rate * p`` for p = (y + 1) / 2): the noise on y has variance
    ``4 p / (255 rate)``; the root mean square over the measurement is returned.
    """
    if noise == "gaussian":
        return float(sigma)
    if noise == "poisson":
        p = ((y.detach().float() + 1.0) / 2.0).clamp(0.0, 1.0)
        return float(torch.sqrt((4.0 * p / (255.0 * float(poisson_rate))).mean()))
    return 0.0


def simulate(
    image: torch.Tensor,
    spec: OperatorSpec,
    noise: str = "gaussian",
    sigma: float = 0.05,
    poisson_rate: float = 1.0,
    seed: int = 0,
) -> tuple[Measurement, torch.Tensor]:
    """Simulate Measurement: y = A(x) + noise for a clean IMAGE; returns the MEASUREMENT and a view IMAGE.

    Image i of the batch gets noise from a generator seeded with ``seed + i`` (modulo 2**64), so it gets
    the same noise as when it is measured alone with that seed.
    """
    x = convert.image_to_samplers(image, "image")
    b, c, h, w = x.shape
    check_image_for_operator(spec, (h, w), b, "image")
    op = spec.build((h, w))
    noise_model = make_noise(noise, sigma, poisson_rate)
    with torch.no_grad():
        clean = op(x)
        generators = [torch.Generator().manual_seed((int(seed) + i) % 2**64) for i in range(b)]
        y = torch.cat([noise_model(clean[i : i + 1], generator=generators[i]) for i in range(b)])
    y = y.detach().float().contiguous()
    m = Measurement(
        operator=op,
        y=y,
        image_size=(h, w),
        channels=c,
        sigma_y=noise_sigma_y(noise, sigma, poisson_rate, clean),
        noise_name=noise,
        operator_spec=spec,
    )
    return m, convert.samplers_to_image(measurement_view(m), "measurement view")


def target_size_from_measurement(spec: OperatorSpec, measured_size: tuple[int, int]) -> tuple[int, int]:
    """Size (H, W) of the clean image that the operator maps to a measurement of ``measured_size``."""
    h, w = measured_size
    if spec.name == "super_resolution":
        f = spec.params["factor"]
        return h * f, w * f
    if spec.name == "phase_retrieval":
        raise ValueError(
            "operator: a phase-retrieval measurement is a Fourier magnitude, not an image, so it "
            "cannot be loaded from an IMAGE; use EquiReg Simulate Measurement instead"
        )
    return h, w


def measurement_from_image(
    image: torch.Tensor,
    spec: OperatorSpec,
    noise: str = "gaussian",
    sigma: float = 0.05,
    poisson_rate: float = 1.0,
) -> Measurement:
    """Measurement from Image: the user's degraded IMAGE is y; the target size follows from the operator
    (e.g. a 128 px photo with super-resolution x4 -> 512 px target). ``noise``/``sigma``/``poisson_rate``
    describe the noise believed to be in the image (used by solvers that weigh the data term)."""
    y = convert.image_to_samplers(image, "image")
    b, c, h, w = y.shape
    target = target_size_from_measurement(spec, (h, w))
    check_image_for_operator(spec, target, b, "target image")
    make_noise(noise, sigma, poisson_rate)  # validates the noise settings
    op = spec.build(target)
    expected = tuple(op.measurement_shape((b, c, *target)))
    if tuple(y.shape) != expected:  # a safety net: the operator disagrees with the size inference above
        raise ValueError(
            f"image: shape {tuple(y.shape)} is not what {spec.describe()} produces from a {target[0]}x"
            f"{target[1]} image (expected {expected})"
        )
    return Measurement(
        operator=op,
        y=y,
        image_size=target,
        channels=c,
        sigma_y=noise_sigma_y(noise, sigma, poisson_rate, y),
        noise_name=noise,
        operator_spec=spec,
    )


def measurement_view(m: Measurement) -> torch.Tensor:
    """A viewable [-1, 1] image batch of the measurement: the log-magnitude spectrum for phase retrieval, a
    low-resolution measurement shown at the target size (nearest neighbour), otherwise y itself."""
    name = m.operator_spec.name if m.operator_spec is not None else getattr(m.operator, "name", "")
    if name == "phase_retrieval":
        return convert.log_magnitude_view(m.y)
    if m.y.dim() == 4 and tuple(m.y.shape[-2:]) != tuple(m.image_size):
        return convert.upsample_nearest(m.y, m.image_size)
    return m.y


def back_projection(m: Measurement) -> torch.Tensor:
    """A clean-image estimate from y alone, (B, C, H, W) in [-1, 1], used to initialise a latent.

    Linear operators with a cheap pseudo-inverse (super-resolution, inpainting, identity) use it; HDR
    divides by its scale (exact where nothing was clipped); the blurs keep the blurred image. Phase
    retrieval has no such estimate.
    """
    op = m.operator
    name = m.operator_spec.name if m.operator_spec is not None else getattr(op, "name", "")
    y = m.y.float()
    with torch.no_grad():
        if name == "phase_retrieval":
            raise ValueError(
                "init: phase retrieval has no back-projection of the measurement; use init 'empty'"
            )
        if name == "hdr":
            x = y / float(op.scale)
        elif getattr(op, "linear", False) and getattr(op, "has_pseudo_inverse", False):
            x = (
                op.pseudo_inverse(y, image_size=m.image_size)
                if name == "super_resolution"
                else op.pseudo_inverse(y)
            )
        elif tuple(y.shape) == tuple(m.image_shape):
            x = y
        else:
            raise ValueError(f"init: no back-projection for {name or type(op).__name__}; use init 'empty'")
    return x.clamp(-1.0, 1.0).contiguous()


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------

LPIPS_BACKBONE_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet weights, used by lpips(net="alex")


def lpips_status() -> tuple[bool, str]:
    """(available, reason): LPIPS is used only when the ``lpips`` package and its AlexNet backbone weights
    are already on this machine (nothing is ever downloaded)."""
    try:
        importlib.import_module("lpips")
    except ImportError:
        return False, "the 'lpips' package is not installed"
    path = Path(torch.hub.get_dir()) / "checkpoints" / LPIPS_BACKBONE_FILE
    if not path.is_file():
        return False, f"its AlexNet weights are not on this machine ({path})"
    return True, "lpips (AlexNet)"


def lpips_distances(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """LPIPS(AlexNet) per image for (B, 3, H, W) tensors in [-1, 1]; only call when :func:`lpips_status` is
    True."""
    lpips = importlib.import_module("lpips")
    model = lpips.LPIPS(net="alex", verbose=False).eval()
    with torch.no_grad():
        return model(x, ref).reshape(-1).float()


def compute_metrics(image: torch.Tensor, reference: torch.Tensor, use_lpips: bool = True) -> dict:
    """PSNR (dB) and SSIM per image of an IMAGE batch against a reference IMAGE (batch 1 or the same batch),
    on the [0, 1] intensity range; LPIPS too when available locally. Returns lists and their means."""
    x = convert.image_to_samplers(image, "image")
    ref = convert.image_to_samplers(reference, "reference")
    if tuple(x.shape[-2:]) != tuple(ref.shape[-2:]):
        raise ValueError(
            f"reference: size {tuple(ref.shape[-2:])} (H, W) differs from the image size "
            f"{tuple(x.shape[-2:])}; compare images of the same size"
        )
    if x.shape[1] != ref.shape[1]:
        raise ValueError(f"reference: {ref.shape[1]} channels but the image has {x.shape[1]}")
    x, ref = convert.batch_broadcast(x, ref, "image", "reference")
    # Images are on the [-1, 1] scale here, so the data range is 2 (the same PSNR/SSIM as [0, 1] with 1).
    psnr = core_metrics.psnr(x, ref, data_range=2.0).reshape(-1).tolist()
    ssim = core_metrics.ssim(x, ref, data_range=2.0).reshape(-1).tolist()
    out = {
        "psnr": psnr,
        "ssim": ssim,
        "psnr_mean": _mean(psnr),
        "ssim_mean": _mean(ssim),
        "lpips": None,
        "lpips_note": "",
    }
    if use_lpips:
        available, note = lpips_status()
        if available and x.shape[1] == 3:
            out["lpips"] = lpips_distances(x, ref).tolist()
            out["lpips_mean"] = _mean(out["lpips"])
        elif available:
            note = "LPIPS needs RGB images"
        out["lpips_note"] = note
    return out


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan


def metrics_text(result: dict, label: str = "") -> str:
    """Readable summary of :func:`compute_metrics` (means first, then one line per image for a batch)."""
    head = f"{label}: " if label else ""
    lines = [
        f"{head}PSNR {convert.format_number(result['psnr_mean'], 2)} dB, "
        f"SSIM {convert.format_number(result['ssim_mean'], 4)}"
    ]
    if result.get("lpips") is not None:
        lines[0] += f", LPIPS {convert.format_number(result['lpips_mean'], 4)}"
    elif result.get("lpips_note"):
        lines.append(f"LPIPS not computed: {result['lpips_note']}")
    n = len(result["psnr"])
    if n > 1:
        lines.append(f"mean over {n} images; per image:")
        for i in range(n):
            line = (
                f"  #{i}: PSNR {convert.format_number(result['psnr'][i], 2)} dB, "
                f"SSIM {convert.format_number(result['ssim'][i], 4)}"
            )
            if result.get("lpips") is not None:
                line += f", LPIPS {convert.format_number(result['lpips'][i], 4)}"
            lines.append(line)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Target latent
# ---------------------------------------------------------------------------------------------------

LATENT_INITS = ("empty", "measurement")


def target_latent(
    m: Measurement, downscale: int, latent_channels: int, init: str = "empty", encode: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target Latent: (latent samples (B, latent_channels, H / downscale, W / downscale), init IMAGE).

    ``init`` "empty" gives zeros; "measurement" encodes the :func:`back_projection` with ``encode`` (a
    function IMAGE (B, H, W, C) in [0, 1] -> latent samples, e.g. ComfyUI's ``VAE.encode``). The IMAGE
    output is the back-projection where there is one, else mid-gray.
    """
    if init not in LATENT_INITS:
        raise ValueError(f"init: expected one of {', '.join(LATENT_INITS)}, got {init!r}")
    if not isinstance(m, Measurement):
        raise TypeError(f"measurement: expected a MEASUREMENT, got {type(m).__name__}")
    h, w = convert.latent_size(m.image_size, int(downscale), "measurement target size")
    shape = (m.batch_size, int(latent_channels), h, w)
    try:
        estimate = back_projection(m)
    except ValueError:
        if init == "measurement":
            raise
        estimate = torch.zeros(m.image_shape)
    image = convert.samplers_to_image(estimate, "init image")
    if init == "empty":
        return torch.zeros(shape), image
    if encode is None:
        raise ValueError("init 'measurement' needs a VAE to encode the back-projection")
    samples = encode(image)
    if tuple(samples.shape) != shape:
        raise ValueError(
            f"vae: encoding a {m.image_size[0]}x{m.image_size[1]} image gave a latent of shape "
            f"{tuple(samples.shape)}, expected {shape}"
        )
    return samples.float().contiguous(), image
