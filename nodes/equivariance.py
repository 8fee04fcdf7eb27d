"""Comfy-free parts of the EquiReg Regularizer and Equivariance Error nodes: which MPE source works with
which form, the per-image equivariance error over a group and its heat map.

Pure PyTorch (imports the core relatively inside ComfyUI, absolutely under pytest), tested without
ComfyUI in ``tests/test_equivariance_error.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..samplers.equireg import EquiReg

Tensor = torch.Tensor

#: What each MPE source maps: (input space, output space).
SOURCE_SPACES: dict[str, tuple[str, str]] = {
    "vae_encoder": ("image", "latent"),
    "vae_decoder": ("latent", "image"),
    "vae_encoder_after_decoder": ("latent", "latent"),
    "file": ("image", "features"),
}


def check_source_form(source: str, form: str) -> None:
    """``equicon`` compares x with f(T_g x), so f must map back into its input space: only the
    encoder-after-decoder round trip does. Raise a ValueError naming the inputs otherwise."""
    if source not in SOURCE_SPACES:
        raise ValueError(f"source: unknown MPE source {source!r}; valid: {', '.join(SOURCE_SPACES)}")
    if form == "equicon":
        space_in, space_out = SOURCE_SPACES[source]
        if space_in != space_out:
            raise ValueError("form: 'equicon' needs an MPE function that maps back into its input "
                             "space, but "
                             f"source {source!r} maps {space_in} -> {space_out}; use source "
                             f"'vae_encoder_after_decoder' or form 'equi'")


def equivariance_report(reg: EquiReg, x: Tensor, reduction: str | None = None) -> tuple[Tensor, Tensor]:
    """Per-image equivariance error (B,) and error map (B, 1, h, w), both averaged over every element the
    regularizer draws from (``group.sample_from``), so the result is deterministic.

    ``x`` is whatever the regularizer's f takes; the map has the spatial size of the difference (f's
    output for ``equi``, x's for ``equicon``).
    """
    elements = reg.group.sample_from
    errors = torch.stack([reg.equivariance_error(x, element=g, reduction=reduction).float()
                          for g in elements])
    maps = [reg.error_map(x, element=g).float() for g in elements]
    size = maps[0].shape[-2:]
    if any(m.shape[-2:] != size for m in maps):  # rotations of a non-square map: compare at one size
        maps = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in maps]
    return errors.mean(dim=0), torch.stack(maps).mean(dim=0)


# Anchor colours of a perceptually ordered dark-to-bright map (black, purple, red, orange, pale yellow).
_ANCHORS = torch.tensor([
    [0.00, 0.00, 0.02],
    [0.33, 0.06, 0.43],
    [0.73, 0.21, 0.33],
    [0.98, 0.55, 0.04],
    [0.99, 1.00, 0.75],
])


def colorize(values: Tensor) -> Tensor:
    """Map values in [0, 1] (any shape) to RGB colours (shape + (3,)) by linear interpolation of anchors."""
    v = values.clamp(0.0, 1.0) * (len(_ANCHORS) - 1)
    lo = v.floor().long().clamp(max=len(_ANCHORS) - 2)
    t = (v - lo.to(v.dtype)).unsqueeze(-1)
    anchors = _ANCHORS.to(values.device, values.dtype)
    return anchors[lo] * (1 - t) + anchors[lo + 1] * t


def heat_map_image(error_map: Tensor, size: tuple[int, int]) -> Tensor:
    """ComfyUI IMAGE (B, H, W, 3) in [0, 1] of an error map (B, 1, h, w), resized to ``size`` (H, W).

    One colour scale for the whole batch (0 -> dark, the batch maximum -> bright), so images of a batch
    can be compared with each other.
    """
    if error_map.dim() != 4 or error_map.shape[1] != 1:
        raise ValueError(f"error map: expected shape (B, 1, h, w), got {tuple(error_map.shape)}")
    m = F.interpolate(error_map.float(), size=tuple(size), mode="bilinear", align_corners=False)
    top = float(m.max())
    scaled = m / top if top > 0 else torch.zeros_like(m)
    return colorize(scaled[:, 0]).cpu()


def error_text(errors: Tensor, reduction: str, source: str, group: str, form: str) -> str:
    """Readable per-image report."""
    lines = [f"EquiReg equivariance error ({form}, {group}, f = {source}, reduction {reduction}; "
             "mean over the group's elements)"]
    for i, e in enumerate(errors.tolist()):
        lines.append(f"image {i}: {e:.6g}")
    return "\n".join(lines)
