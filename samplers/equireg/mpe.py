"""MPE (manifold-preferential equivariant) functions for EquiReg.

Any callable mapping a batch to a batch can be an MPE function f. This module adds:

- adapters that build f from a model's encode/decode callables:
  :func:`encoder_mpe` (image -> latent, for ``form="equi"`` in image space, like the released SITCOM
  config), :func:`decoder_mpe` (latent -> image, for ``form="equi"`` in latent space, like the
  released PSLD config) and :func:`encoder_after_decoder_mpe` (latent -> latent, f(z) = E(D(z)), for
  ``form="equicon"``);
- :class:`SmallCNN`, a small convolutional feature extractor like the released library's MPE network
  (blocks of Conv3x3 stride 2 -> norm -> ReLU), with safetensors save/load.

Inputs are images (B, C, H, W) in [-1, 1] — the same range as the released training pipeline's
``Normalize(mean=0.5, std=0.5)`` — so no normalisation is applied inside f.

Why ``SmallCNN`` returns spatial feature maps (solvers.md §5): the released library used the
classifier logits ``SmallCNN.forward`` as f, but for its contrastive and equivariance checkpoints that
head is never trained (a random linear map of pooled features), and the released feature action
applied flips/rotations to the (B, classes) vector, which is meaningless. Here ``forward`` *is*
``forward_features``: the (B, C', H', W') maps on which the group acts spatially. The optional
classification head is reachable only through :meth:`SmallCNN.classify`.

Batch independence: normalisation is GroupNorm (per sample) or none, never BatchNorm, so the output
for one sample never depends on the other samples of the batch.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    "NORMS",
    "MPEAdapter",
    "SmallCNN",
    "decoder_mpe",
    "encoder_after_decoder_mpe",
    "encoder_mpe",
    "load_mpe_cnn",
    "save_mpe_cnn",
]

Fn = Callable[[torch.Tensor], torch.Tensor]


def _check_callable(fn: object, name: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be callable (tensor -> tensor), got {type(fn).__name__}")


class MPEAdapter:
    """A named callable MPE function (the name shows in ``repr`` and node UIs)."""

    def __init__(self, fn: Fn, name: str) -> None:
        _check_callable(fn, "fn")
        self.fn = fn
        self.name = name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def __repr__(self) -> str:
        return f"MPEAdapter({self.name})"


def encoder_mpe(encode: Fn) -> MPEAdapter:
    """f(x) = encode(x): image (B, C, H, W) in [-1, 1] -> spatial latent. Use with ``form="equi"``."""
    _check_callable(encode, "encode")
    return MPEAdapter(encode, "encoder")


def decoder_mpe(decode: Fn) -> MPEAdapter:
    """f(z) = decode(z): latent -> image. Use with ``form="equi"`` on latents (PSLD-style)."""
    _check_callable(decode, "decode")
    return MPEAdapter(decode, "decoder")


def encoder_after_decoder_mpe(encode: Fn, decode: Fn) -> MPEAdapter:
    """f(z) = encode(decode(z)): latent -> latent round trip. Use with ``form="equicon"``."""
    _check_callable(encode, "encode")
    _check_callable(decode, "decode")

    def round_trip(z: torch.Tensor) -> torch.Tensor:
        return encode(decode(z))

    return MPEAdapter(round_trip, "encoder_after_decoder")


# ---------------------------------------------------------------------------------------- SmallCNN

NORMS: tuple[str, ...] = ("group", "none")
_CONFIG_KEYS: tuple[str, ...] = ("in_channels", "base_channels", "num_blocks", "num_classes", "norm")
_FORMAT = "equireg.small_cnn"
_FORMAT_VERSION = "1"


def _positive_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"SmallCNN: {name} must be an int >= {minimum}, got {value!r}")
    return value


class SmallCNN(nn.Module):
    """Small CNN feature extractor: ``num_blocks`` x (Conv3x3 stride 2, pad 1 -> norm -> ReLU).

    Channels are ``base_channels * min(2**i, 4)`` for block i (64 -> 128 -> 256 -> 256 with the
    defaults, as in the released library), so a 256x256 image gives (B, 256, 16, 16) features.
    ``forward(x) == forward_features(x)``: spatial feature maps, the MPE function. ``num_classes > 0``
    adds a pooled linear head reachable through :meth:`classify` (e.g. for transformation prediction
    training); it is never used as f. ``norm`` is ``group`` (GroupNorm) or ``none``.

    Input: (B, in_channels, H, W) in [-1, 1], any H, W >= 1.
    """

    def __init__(
        self,
        in_channels: int = 3,
        base_channels: int = 64,
        num_blocks: int = 4,
        num_classes: int = 0,
        norm: str = "group",
    ) -> None:
        super().__init__()
        _positive_int(in_channels, "in_channels")
        _positive_int(base_channels, "base_channels")
        _positive_int(num_blocks, "num_blocks")
        _positive_int(num_classes, "num_classes", minimum=0)
        if norm not in NORMS:
            raise ValueError(f"SmallCNN: unknown norm {norm!r}; valid values: {', '.join(NORMS)}")
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.num_blocks = num_blocks
        self.num_classes = num_classes
        self.norm = norm

        layers: list[nn.Module] = []
        ch_in = in_channels
        for i in range(num_blocks):
            ch_out = base_channels * min(2**i, 4)
            # Bias is redundant before a normalisation layer.
            layers.append(nn.Conv2d(ch_in, ch_out, kernel_size=3, stride=2, padding=1, bias=(norm == "none")))
            if norm == "group":
                layers.append(nn.GroupNorm(math.gcd(ch_out, 8), ch_out))
            layers.append(nn.ReLU(inplace=False))
            ch_in = ch_out
        self.features = nn.Sequential(*layers)
        self.out_channels = ch_in
        self.head = nn.Linear(ch_in, num_classes) if num_classes > 0 else None

    @property
    def config(self) -> dict[str, Any]:
        """Architecture options (stored in saved checkpoints)."""
        return {k: getattr(self, k) for k in _CONFIG_KEYS}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> SmallCNN:
        """Build from an architecture config; unknown keys are rejected."""
        unknown = sorted(set(config) - set(_CONFIG_KEYS))
        if unknown:
            raise ValueError(
                f"SmallCNN: unknown config key(s) {', '.join(map(str, unknown))}; valid keys: "
                f"{', '.join(_CONFIG_KEYS)}"
            )
        return cls(**dict(config))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial feature maps (B, out_channels, ceil(H / 2**n), ceil(W / 2**n))."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SmallCNN: expected input (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}"
            )
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of the optional head on globally pooled features."""
        if self.head is None:
            raise ValueError("SmallCNN: this model has no classification head (num_classes=0)")
        return self.head(self.forward_features(x).mean(dim=(-2, -1)))


def save_mpe_cnn(model: SmallCNN, path: str | os.PathLike[str]) -> None:
    """Save a :class:`SmallCNN` to a safetensors file, its architecture config in the metadata."""
    if not isinstance(model, SmallCNN):
        raise TypeError(f"save_mpe_cnn: model must be a SmallCNN, got {type(model).__name__}")
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": "pt",
        "equireg_format": _FORMAT,
        "equireg_format_version": _FORMAT_VERSION,
        "config": json.dumps(model.config, sort_keys=True),
    }
    save_file(tensors, os.fspath(path), metadata=metadata)


def load_mpe_cnn(
    path: str | os.PathLike[str],
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> SmallCNN:
    """Load a :func:`save_mpe_cnn` file: the model is returned in eval mode with frozen weights.

    Raises ValueError when the file is not a SmallCNN MPE checkpoint or when its tensors do not match
    the architecture in its metadata (missing, unexpected or mis-shaped keys are listed).
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_mpe_cnn: no such file {path!r}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"load_mpe_cnn: dtype must be a floating torch.dtype, got {dtype!r}")
    try:
        with safe_open(path, framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for non-safetensors files
        raise ValueError(f"load_mpe_cnn: {path!r} is not a readable safetensors file ({exc})") from exc
    if metadata.get("equireg_format") != _FORMAT or "config" not in metadata:
        raise ValueError(
            f"load_mpe_cnn: {path!r} is not a SmallCNN MPE checkpoint (metadata equireg_format="
            f"{metadata.get('equireg_format')!r}, expected {_FORMAT!r} with a 'config' entry)"
        )
    try:
        config = json.loads(metadata["config"])
    except json.JSONDecodeError as exc:
        raise ValueError(f"load_mpe_cnn: {path!r} has an unreadable architecture config ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"load_mpe_cnn: {path!r}: architecture config must be a JSON object, got {config!r}")
    model = SmallCNN.from_config(config)

    state = load_file(path, device="cpu")
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if mismatched:
        problems.append(f"shape mismatches [{'; '.join(mismatched)}]")
    if problems:
        raise ValueError(
            f"load_mpe_cnn: {path!r} does not match the SmallCNN config {config}: " + ", ".join(problems)
        )
    model.load_state_dict(state, strict=True)
    model.to(device=device, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model
