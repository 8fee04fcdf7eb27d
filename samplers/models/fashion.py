"""The trained Fashion-MNIST models of this repository, ready to use.

All files live in ``weights/`` (safetensors, each <= 5 MB, with their construction config and a
training record as JSON metadata) and ``data/``; ``docs/training.md`` says how each was trained.

- :func:`load_pixel_prior`: an :class:`~samplers.models.small_unet.EDMDenoiser` on (B, 1, 32, 32)
  images in [-1, 1]. ``model(x, sigma)`` returns the denoised x0 for ``x = x0 + sigma * noise``
  (k-diffusion / ComfyUI VE convention), so it plugs into the solvers unchanged.
- :func:`load_autoencoder`: a :class:`~samplers.models.autoencoder.KLAutoencoder`,
  ``encode``: (B, 1, 32, 32) image -> (B, 4, 8, 8) latent scaled to about unit std, ``decode``: back
  (differentiable).
- :func:`load_latent_prior`: an EDMDenoiser on those scaled latents (same VE convention). Its file
  records the autoencoder's scale factor; loading both checks that they belong together.
- :func:`load_mpe`: the MPE function f for EquiReg (a feature map of a CNN classifier trained with
  flip/rotation augmentation).
- :func:`load_test_images`: the 64 held-out Fashion-MNIST TEST images (never used for training).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .autoencoder import KLAutoencoder
from .small_unet import EDMDenoiser, SmallUNet

__all__ = [
    "AUTOENCODER_FILE",
    "DATA_DIR",
    "DEGRADATIONS",
    "LATENT_PRIOR_FILE",
    "MPE_FILE",
    "PIXEL_PRIOR_FILE",
    "TEST_IMAGES_FILE",
    "VALIDATION_IMAGES_FILE",
    "WEIGHTS_DIR",
    "degrade",
    "load_autoencoder",
    "load_edm_denoiser",
    "load_latent_prior",
    "load_mpe",
    "load_pixel_prior",
    "load_test_images",
    "load_validation_images",
    "read_metadata",
    "relative_equivariance_error",
    "save_autoencoder",
    "save_edm_denoiser",
]

_REPO = Path(__file__).resolve().parents[2]
WEIGHTS_DIR = _REPO / "weights"
DATA_DIR = _REPO / "data"
PIXEL_PRIOR_FILE = WEIGHTS_DIR / "fashion_pixel_prior.safetensors"
LATENT_PRIOR_FILE = WEIGHTS_DIR / "fashion_latent_prior.safetensors"
AUTOENCODER_FILE = WEIGHTS_DIR / "fashion_autoencoder.safetensors"
MPE_FILE = WEIGHTS_DIR / "fashion_mpe.safetensors"
TEST_IMAGES_FILE = DATA_DIR / "fashion_test64.safetensors"
VALIDATION_IMAGES_FILE = DATA_DIR / "fashion_val32.safetensors"

_EDM_KIND = "edm_denoiser"
_AE_KIND = "kl_autoencoder"
MAX_WEIGHTS_BYTES = 5 * 1024 * 1024


def _resolve(path: str | Path | None, default: Path) -> Path:
    p = default if path is None else Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"weights file {p} not found (the repository's weights/ folder ships it)")
    return p


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON metadata of a weights file written by this module (kind, config, training record)."""
    with safe_open(str(path), framework="pt") as fh:
        raw = fh.metadata() or {}
    return {k: json.loads(v) for k, v in raw.items()}


def _save(tensors: Mapping[str, torch.Tensor], path: str | Path, kind: str, config: Mapping[str, Any],
          training: Mapping[str, Any] | None, extra: Mapping[str, Any] | None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"kind": kind, "config": dict(config), "training": dict(training or {}), **dict(extra or {})}
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})
    size = path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise ValueError(f"{path} is {size} bytes, over the repository's 5 MB limit per weights file")
    return path


def _place(module: nn.Module, device: torch.device | str | None, dtype: torch.dtype | None) -> nn.Module:
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    module = module.to(device=device, dtype=dtype)
    return module.eval().requires_grad_(False)


def save_edm_denoiser(model: EDMDenoiser, path: str | Path, training: Mapping[str, Any] | None = None,
                      extra: Mapping[str, Any] | None = None) -> Path:
    """Write an EDMDenoiser's weights with its config and a training record as metadata."""
    if not isinstance(model, EDMDenoiser):
        raise TypeError(f"model must be an EDMDenoiser, got {type(model).__name__}")
    return _save(model.state_dict(), path, _EDM_KIND, model.config(), training, extra)


def load_edm_denoiser(path: str | Path, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = torch.float32) -> EDMDenoiser:
    """Rebuild an EDMDenoiser saved by :func:`save_edm_denoiser` (eval mode, no parameter grads)."""
    meta = read_metadata(path)
    if meta.get("kind") != _EDM_KIND:
        raise ValueError(f"{path} holds {meta.get('kind')!r}, expected {_EDM_KIND!r}")
    cfg = meta["config"]
    model = EDMDenoiser(SmallUNet(**cfg["unet"]), cfg["sigma_data"], cfg["sigma_min"], cfg["sigma_max"])
    model.load_state_dict(load_file(str(path)), strict=True)
    return _place(model, device, dtype)


def save_autoencoder(model: KLAutoencoder, path: str | Path, training: Mapping[str, Any] | None = None,
                     extra: Mapping[str, Any] | None = None) -> Path:
    """Write a KLAutoencoder (including its scale factor) with config and training record."""
    if not isinstance(model, KLAutoencoder):
        raise TypeError(f"model must be a KLAutoencoder, got {type(model).__name__}")
    return _save(model.state_dict(), path, _AE_KIND, model.full_config(), training, extra)


def load_autoencoder(path: str | Path | None = None, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = torch.float32) -> KLAutoencoder:
    """The trained 32x32x1 -> 8x8x4 KL autoencoder; ``encode``/``decode`` use the scaled latent space."""
    path = _resolve(path, AUTOENCODER_FILE)
    meta = read_metadata(path)
    if meta.get("kind") != _AE_KIND:
        raise ValueError(f"{path} holds {meta.get('kind')!r}, expected {_AE_KIND!r}")
    model = KLAutoencoder(**meta["config"])
    model.load_state_dict(load_file(str(path)), strict=True)
    return _place(model, device, dtype)


def load_pixel_prior(path: str | Path | None = None, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = torch.float32) -> EDMDenoiser:
    """The pixel-space diffusion prior on (B, 1, 32, 32) Fashion-MNIST images in [-1, 1]."""
    return load_edm_denoiser(_resolve(path, PIXEL_PRIOR_FILE), device, dtype)


def load_latent_prior(path: str | Path | None = None, device: torch.device | str | None = None,
                      dtype: torch.dtype | None = torch.float32,
                      autoencoder: KLAutoencoder | None = None) -> EDMDenoiser:
    """The latent diffusion prior on (B, 4, 8, 8) scaled latents of :func:`load_autoencoder`.

    The latent scale factor is stored with these weights; if ``autoencoder`` is given (or the default
    one is present) the two must agree, so that ``model`` and ``decode``/``encode`` form one pair.
    """
    path = _resolve(path, LATENT_PRIOR_FILE)
    model = load_edm_denoiser(path, device, dtype)
    scale = read_metadata(path).get("latent_scale_factor")
    if scale is None:
        raise ValueError(f"{path} has no 'latent_scale_factor' metadata: not a latent prior")
    model.latent_scale_factor = float(scale)
    if autoencoder is None and AUTOENCODER_FILE.is_file() and path.parent == AUTOENCODER_FILE.parent:
        ae_scale = read_metadata(AUTOENCODER_FILE)["config"]["scale_factor"]
    elif autoencoder is not None:
        ae_scale = float(autoencoder.scale_factor)
    else:
        ae_scale = None
    if ae_scale is not None and abs(ae_scale - scale) > 1e-6 * abs(scale):
        raise ValueError(f"latent prior was trained with scale factor {scale}, "
                         f"the autoencoder has {ae_scale}")
    return model


def _load_images(path: Path, what: str, n: int | None, device: torch.device | str | None,
                 dtype: torch.dtype, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; run `python -m train.fashion_data --split {split}`")
    data = load_file(str(path))
    images, labels = data["images"], data["labels"]
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= images.shape[0]:
            raise ValueError(f"n must be an int in [1, {images.shape[0]}] or None (all {what}), got {n!r}")
        images, labels = images[:n], labels[:n]
    return images.to(device=device, dtype=dtype), labels.to(device)


def load_test_images(n: int | None = None, device: torch.device | str | None = None,
                     dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out Fashion-MNIST test images (B, 1, 32, 32) in [-1, 1] and their labels (B,).

    ``n`` takes the first n of the 64 (all if None).
    """
    return _load_images(TEST_IMAGES_FILE, "test images", n, device, dtype, "test")


def load_validation_images(n: int | None = None, device: torch.device | str | None = None,
                           dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """32 validation images (B, 1, 32, 32) in [-1, 1] and labels: TRAIN-split images that no training
    script used (the held-out last 1,000). Anything that is chosen or swept uses these, never the test
    images. ``n`` takes the first n (all if None)."""
    return _load_images(VALIDATION_IMAGES_FILE, "validation images", n, device, dtype, "validation")


def load_mpe(path: str | Path | None = None, device: torch.device | str | None = None,
             dtype: torch.dtype | None = torch.float32) -> nn.Module:
    """The MPE function f for EquiReg: a :class:`samplers.equireg.SmallCNN` (Fashion-MNIST classifier
    trained with flip/rotation augmentation); ``f(x)`` maps (B, 1, H, W) images in [-1, 1] to spatial
    feature maps (B, 128, H/8, W/8), on which the group acts spatially."""
    from ..equireg.mpe import load_mpe_cnn  # deferred: the regularizer package is optional here

    return load_mpe_cnn(_resolve(path, MPE_FILE), device=device, dtype=dtype)


# ----------------------------------------------------------------------------- MPE premise check

#: Degradations of the premise check (images in [-1, 1], 32x32 Fashion-MNIST scale).
DEGRADATIONS: dict[str, str] = {
    "blur": "Gaussian blur, std 1.5 px (13x13 kernel, reflect padding)",
    "box_mask": "a centred 12x12 box set to 0 (the mid-grey of [-1, 1])",
    "random_mask": "70% of the pixels (uniformly at random) set to 0",
    "noise": "additive Gaussian noise, std 0.2",
}


def degrade(x: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """One of :data:`DEGRADATIONS` applied to (B, C, H, W) images in [-1, 1] (random parts per sample)."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; valid values: {', '.join(DEGRADATIONS)}")
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if kind == "blur":
        t = torch.arange(13, dtype=x.dtype, device=x.device) - 6
        k1 = torch.exp(-0.5 * (t / 1.5) ** 2)
        k1 = k1 / k1.sum()
        kernel = (k1[:, None] * k1[None, :]).expand(x.shape[1], 1, 13, 13)
        pad = torch.nn.functional.pad(x, (6, 6, 6, 6), mode="reflect")
        return torch.nn.functional.conv2d(pad, kernel, groups=x.shape[1])
    if kind == "box_mask":
        h, w = x.shape[-2:]
        out = x.clone()
        top, left = (h - 12) // 2, (w - 12) // 2
        out[..., max(top, 0): top + 12, max(left, 0): left + 12] = 0.0
        return out
    if kind == "random_mask":
        keep = torch.rand(x.shape[0], 1, *x.shape[-2:], generator=generator).to(x.device) >= 0.7
        return torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device))
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x + 0.2 * noise


def relative_equivariance_error(f: nn.Module, x: torch.Tensor, group: str = "hflip",
                                g: int | None = None) -> torch.Tensor:
    """Per-sample normalised equivariance error of f at x, shape (B,).

    ``||rho(g) f(x) - f(T_g x)|| / (0.5 * (||rho(g) f(x)|| + ||f(T_g x)||))`` with the spatial feature
    action rho(g) = T_g (the numerator is the norm of EquiReg's ``equi`` difference). The normalisation
    makes inputs whose features are larger or smaller (noisy / blurred images) comparable; the value
    lies in [0, 2]. ``g`` defaults to the group's first run-time element (hflip; +90 degrees for rot90).
    """
    from ..equireg.groups import get_group  # deferred: the regularizer package is optional here

    grp = get_group(group)
    g = grp.sample_from[0] if g is None else grp.check_element(g)
    rho_fx = grp.apply(f(x), g)
    f_tx = f(grp.apply(x, g))
    if rho_fx.shape != f_tx.shape:
        raise ValueError(f"f is not shape-equivariant for input {tuple(x.shape)}: rho(g) f(x) has shape "
                         f"{tuple(rho_fx.shape)}, f(T_g x) has {tuple(f_tx.shape)}")
    num = (rho_fx - f_tx).flatten(1).norm(dim=1)
    scale = 0.5 * (rho_fx.flatten(1).norm(dim=1) + f_tx.flatten(1).norm(dim=1))
    return num / scale.clamp_min(1e-12)
