"""Conversions between ComfyUI's data types and the core library's conventions, and input checks.

Pure PyTorch: this module never imports ComfyUI, so it is tested without it.

ComfyUI types (see ComfyUI's docs, "Images, Latents, and Masks"):

- IMAGE: float tensor (B, H, W, C), channels last, values in [0, 1].
- MASK: float tensor (B, H, W) or (H, W), values in [0, 1]; 1 marks the region to fill in (the mask
  editor paints it, LoadImage takes it from transparency).
- LATENT: dict with ``"samples"`` (B, C, h, w) in the VAE's latent space (plus optional keys).

Core library (``samplers``): images are float tensors (B, C, H, W) with values in [-1, 1]; the inpainting
operator's mask is 1 on observed pixels and 0 on missing ones.
"""

from __future__ import annotations

import math
from typing import Any

import torch

IMAGE_CHANNELS = (1, 3, 4)


def check_finite(t: torch.Tensor, what: str) -> torch.Tensor:
    """Raise ValueError naming ``what`` when ``t`` holds NaN or infinite values."""
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{what}: contains {bad} NaN or infinite value(s); expected finite numbers")
    return t


def check_comfy_image(image: Any, what: str = "image") -> torch.Tensor:
    """Check a ComfyUI IMAGE: a finite float tensor (B, H, W, C) with C in 1, 3, 4 and no empty dimension."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{what}: expected an IMAGE tensor (B, H, W, C), got {type(image).__name__}")
    if not image.is_floating_point():
        raise TypeError(f"{what}: expected a floating-point IMAGE tensor, got dtype {image.dtype}")
    if image.dim() != 4:
        raise ValueError(f"{what}: expected an IMAGE of shape (B, H, W, C), got shape {tuple(image.shape)}")
    if min(image.shape) == 0:
        raise ValueError(f"{what}: expected a non-empty IMAGE, got shape {tuple(image.shape)}")
    if image.shape[-1] not in IMAGE_CHANNELS:
        raise ValueError(
            f"{what}: expected 1, 3 or 4 channels in the last dimension of the IMAGE (B, H, W, C),"
            f" got shape {tuple(image.shape)}"
        )
    return check_finite(image, what)


def image_to_samplers(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) in [0, 1] -> float32 CPU tensor (B, C, H, W) in [-1, 1].

    An alpha channel (C = 4) is dropped: measurements are taken on colour only. Values outside [0, 1]
    are kept (they are finite; an upstream node may produce them on purpose).
    """
    image = check_comfy_image(image, what)
    if image.shape[-1] == 4:
        image = image[..., :3]
    x = image.detach().to(device="cpu", dtype=torch.float32).permute(0, 3, 1, 2)
    # clone(): IMAGE inputs may be inference tensors, and the result must be an ordinary tensor.
    return (x * 2.0 - 1.0).contiguous().clone()


def samplers_to_image(x: torch.Tensor, what: str = "tensor") -> torch.Tensor:
    """Core tensor (B, C, H, W) in [-1, 1] -> ComfyUI IMAGE (B, H, W, 3) in [0, 1] (clamped, float32, CPU).

    One channel is repeated to three, so that every image node can show it.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(
            f"{what}: expected a tensor (B, C, H, W), got "
            f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
        )
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"{what}: expected 1 or 3 channels to make an IMAGE, got shape {tuple(x.shape)}")
    img = ((x.detach().float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)
    return img.permute(0, 2, 3, 1).contiguous()


def comfy_mask_to_observed(
    mask: Any, image_size: tuple[int, int] | None = None, batch_size: int | None = None, what: str = "mask"
) -> torch.Tensor:
    """ComfyUI MASK (B, H, W) or (H, W), 1 = fill in -> inpainting mask (B or 1, 1, H, W), 1 = observed.

    The mask is binarised at 0.5 (the mask editor's soft brush edges count as missing from 0.5 up).
    With ``image_size`` = (H, W) and ``batch_size`` the mask must match them: same size, and batch 1 or B.
    """
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{what}: expected a MASK tensor (B, H, W), got {type(mask).__name__}")
    if not (mask.is_floating_point() or mask.dtype == torch.bool):
        raise TypeError(f"{what}: expected a float MASK, got dtype {mask.dtype}")
    if mask.dim() == 2:
        mask = mask[None]
    if mask.dim() != 3 or min(mask.shape) == 0:
        raise ValueError(
            f"{what}: expected a MASK of shape (B, H, W) or (H, W), got shape {tuple(mask.shape)}"
        )
    mask = mask.detach().to(device="cpu", dtype=torch.float32)
    check_finite(mask, what)
    if image_size is not None and tuple(mask.shape[-2:]) != tuple(image_size):
        raise ValueError(
            f"{what}: the MASK has size {tuple(mask.shape[-2:])} (H, W) but the image has size "
            f"{tuple(image_size)}; resize the mask or the image so that they match"
        )
    if batch_size is not None and mask.shape[0] not in (1, batch_size):
        raise ValueError(
            f"{what}: the MASK has batch size {mask.shape[0]} but there are {batch_size} images "
            f"(expected 1 mask for all, or one per image)"
        )
    observed = (mask < 0.5).float()
    return observed[:, None].contiguous()


def observed_to_comfy_mask(observed: torch.Tensor) -> torch.Tensor:
    """Inpainting mask (B, 1, H, W), 1 = observed -> ComfyUI MASK (B, H, W), 1 = missing."""
    return (1.0 - observed.detach().float().cpu())[:, 0].contiguous()


def latent_samples(latent: Any, what: str = "latent") -> torch.Tensor:
    """The ``"samples"`` tensor of a ComfyUI LATENT dict, checked to be a finite 4-D float tensor."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise TypeError(
            f"{what}: expected a LATENT dict with a 'samples' tensor, got {type(latent).__name__}"
        )
    samples = latent["samples"]
    if not isinstance(samples, torch.Tensor) or samples.dim() != 4:
        raise ValueError(
            f"{what}: expected LATENT samples of shape (B, C, h, w), got "
            f"{tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__}"
        )
    return check_finite(samples, what)


def make_latent(samples: torch.Tensor) -> dict:
    """A ComfyUI LATENT dict around ``samples`` (B, C, h, w)."""
    return {"samples": samples}


def latent_size(image_size: tuple[int, int], downscale: int, what: str = "image size") -> tuple[int, int]:
    """(h, w) of the latent of an image of ``image_size``; ValueError unless both sides divide exactly."""
    h, w = image_size
    if downscale < 1:
        raise ValueError(f"{what}: the VAE downscale ratio must be >= 1, got {downscale}")
    if h % downscale or w % downscale:
        raise ValueError(
            f"{what}: {h}x{w} (H x W) is not a multiple of the VAE's downscale ratio {downscale}; "
            f"use an image size whose sides are multiples of {downscale} (e.g. "
            f"{max(downscale, round(h / downscale) * downscale)}x"
            f"{max(downscale, round(w / downscale) * downscale)})"
        )
    return h // downscale, w // downscale


def log_magnitude_view(y: torch.Tensor) -> torch.Tensor:
    """A viewable [-1, 1] image of a Fourier magnitude (B, C, H, W): log(1 + |y|), each image scaled to its
    own maximum (the DC term dominates a linear view)."""
    v = torch.log1p(y.detach().float().abs())
    peak = v.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return v / peak * 2.0 - 1.0


def upsample_nearest(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of (B, C, h, w) to ``size``: shows a low-resolution measurement pixel by pixel
    at the size of the image it was measured from."""
    return torch.nn.functional.interpolate(y.detach().float(), size=tuple(size), mode="nearest")


def batch_broadcast(
    a: torch.Tensor, b: torch.Tensor, what_a: str, what_b: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Broadcast two batches against each other along dimension 0 (equal, or one of them 1)."""
    na, nb = a.shape[0], b.shape[0]
    if na == nb:
        return a, b
    if na == 1:
        return a.expand(nb, *a.shape[1:]), b
    if nb == 1:
        return a, b.expand(na, *b.shape[1:])
    raise ValueError(
        f"{what_a} has batch size {na} but {what_b} has batch size {nb}; expected equal batch "
        f"sizes, or one of them 1"
    )


def format_number(value: float, digits: int = 4) -> str:
    """Format a metric for the text output (``nan``/``inf`` spelled out)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"
