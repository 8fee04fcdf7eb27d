"""The guided-diffusion ("ADM") UNet of Dhariwal & Nichol, written from the architecture description.

This is our own implementation of the network used by OpenAI's ``256x256_diffusion_uncond.pt`` and DPS's
``ffhq_10m.pt``. Module and attribute names reproduce the checkpoint key names exactly
(``time_embed.0.weight``, ``input_blocks.1.0.in_layers.2.weight``, ``middle_block.1.qkv.weight``,
``out.2.weight`` ...), so those files load with ``strict=True``. The architecture is configured from a
checkpoint's keys and shapes by :func:`infer_adm_config`.

Images are (B, C, H, W) float tensors in [-1, 1]. The network is an epsilon (and, with ``learn_sigma``,
variance-interpolation) predictor: ``forward(x, t)`` returns (B, out_channels, H, W).

Things the weights cannot tell (they change the computation but no tensor shape) are config options with
the defaults of every public 256x256 ADM checkpoint: ``num_head_channels=64`` and the legacy q/k/v head
ordering (``use_new_attention_order=False``). Files written by :func:`save_adm_safetensors` record the full
config in their metadata, so they reload exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "ADMConfig",
    "ADMUNet",
    "UnsafeCheckpointError",
    "infer_adm_config",
    "load_adm_checkpoint",
    "read_adm_state_dict",
    "save_adm_safetensors",
    "timestep_embedding",
]

#: Safetensors metadata key under which :func:`save_adm_safetensors` stores the JSON config.
CONFIG_METADATA_KEY = "adm_config"

# Config fields that no tensor shape determines; they may be given to infer_adm_config / the loaders.
_FREE_OPTIONS = (
    "image_size",
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
    "use_new_attention_order",
    "dropout",
    "use_checkpoint",
)


# ---------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ADMConfig:
    """Architecture of an ADM UNet (the arguments of guided-diffusion's ``UNetModel``, 2-D only).

    ``attention_ds`` lists the downsampling factors (1, 2, 4, ...) at which attention blocks sit, as in the
    reference's ``attention_resolutions`` after ``image_size // res``. ``image_size`` is informative only
    (the network runs at any size); with it, :attr:`attention_resolutions` gives the pixel resolutions.
    """

    model_channels: int
    channel_mult: tuple[float, ...]
    num_res_blocks: int
    attention_ds: tuple[int, ...]
    in_channels: int = 3
    out_channels: int = 6
    num_heads: int = 4
    num_head_channels: int = 64
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    conv_resample: bool = True
    num_classes: int | None = None
    use_new_attention_order: bool = False
    dropout: float = 0.0
    use_checkpoint: bool = False
    image_size: int | None = None

    def __post_init__(self) -> None:
        for name in ("model_channels", "in_channels", "out_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ADMConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.num_res_blocks, int) or self.num_res_blocks < 0:
            raise ValueError(f"ADMConfig.num_res_blocks must be an int >= 0, got {self.num_res_blocks!r}")
        mult = tuple(self.channel_mult)
        if not mult or any(not isinstance(m, (int, float)) or m <= 0 for m in mult):
            raise ValueError(f"ADMConfig.channel_mult must be a non-empty sequence of positive numbers, "
                             f"got {self.channel_mult!r}")
        # Normalise integral multipliers to int so configs compare equal however they were written.
        object.__setattr__(self, "channel_mult", tuple(int(m) if float(m).is_integer() else float(m)
                                                       for m in mult))
        ds_valid = {2**level for level in range(len(mult))}
        ds = tuple(sorted(int(d) for d in self.attention_ds))
        if any(d not in ds_valid for d in ds):
            raise ValueError(f"ADMConfig.attention_ds must be downsampling factors among {sorted(ds_valid)}, "
                             f"got {self.attention_ds!r}")
        object.__setattr__(self, "attention_ds", ds)
        if self.num_head_channels == -1:
            if self.num_heads < 1:
                raise ValueError(f"ADMConfig.num_heads must be >= 1 when num_head_channels is -1, "
                                 f"got {self.num_heads!r}")
        elif self.num_head_channels < 1:
            raise ValueError(f"ADMConfig.num_head_channels must be -1 or >= 1, "
                             f"got {self.num_head_channels!r}")
        if self.num_heads_upsample != -1 and self.num_heads_upsample < 1:
            raise ValueError(f"ADMConfig.num_heads_upsample must be -1 or >= 1, "
                             f"got {self.num_heads_upsample!r}")
        if self.num_classes is not None and self.num_classes < 1:
            raise ValueError(f"ADMConfig.num_classes must be None or >= 1, got {self.num_classes!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ADMConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"ADMConfig.image_size must be None or a positive int, got {self.image_size!r}")
        for level, m in enumerate(self.channel_mult):
            ch = int(m * self.model_channels)
            if ch % 32:
                raise ValueError(f"ADMConfig: level {level} has {ch} channels (channel_mult {m} x "
                                 f"model_channels {self.model_channels}); GroupNorm(32) needs a "
                                 "multiple of 32")
        for ch in self.attention_channels():
            self.heads_for(ch)  # raises when the head split is impossible

    # Derived values -------------------------------------------------------------------------------------
    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def learn_sigma(self) -> bool:
        """True when the network also predicts the variance interpolation (out = 2 x in channels)."""
        return self.out_channels == 2 * self.in_channels

    @property
    def num_levels(self) -> int:
        return len(self.channel_mult)

    @property
    def attention_resolutions(self) -> tuple[int, ...] | None:
        """Pixel resolutions with attention (needs ``image_size``), largest first."""
        if self.image_size is None:
            return None
        return tuple(sorted((self.image_size // d for d in self.attention_ds), reverse=True))

    def level_channels(self, level: int) -> int:
        return int(self.channel_mult[level] * self.model_channels)

    def attention_channels(self) -> list[int]:
        """Channel counts of all attention blocks (those of the attention levels, plus the middle block)."""
        chans = [self.level_channels(int(math.log2(d))) for d in self.attention_ds]
        return chans + [self.level_channels(self.num_levels - 1)]

    def heads_for(self, channels: int, upsample: bool = False) -> int:
        """Number of attention heads of a block with ``channels`` channels (as the reference decides it)."""
        if self.num_head_channels != -1:
            if channels % self.num_head_channels:
                raise ValueError(f"ADMConfig: attention with {channels} channels is not divisible by "
                                 f"num_head_channels={self.num_head_channels}; pass a num_head_channels "
                                 "that divides it, or num_head_channels=-1 with num_heads")
            return channels // self.num_head_channels
        heads = self.num_heads_upsample if upsample and self.num_heads_upsample != -1 else self.num_heads
        if channels % heads:
            raise ValueError(f"ADMConfig: attention with {channels} channels is not divisible by "
                             f"{heads} heads")
        return heads

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channel_mult"] = list(self.channel_mult)
        d["attention_ds"] = list(self.attention_ds)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ADMConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"ADMConfig.from_dict: unknown field(s) {unknown}; "
                             f"valid fields: {sorted(names)}")
        kwargs = dict(data)
        for key in ("channel_mult", "attention_ds"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# Inferring the config from a state dict (or a key -> shape manifest)

_BLOCK_KEY = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)\.([A-Za-z_]+)")


def _shape_table(state: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    if not isinstance(state, Mapping):
        raise TypeError(f"state_dict_or_manifest must be a mapping of key -> tensor or shape, "
                        f"got {type(state).__name__}")
    shapes: dict[str, tuple[int, ...]] = {}
    for key, value in state.items():
        if not isinstance(key, str):
            raise TypeError(f"state_dict_or_manifest keys must be str, got {type(key).__name__}")
        if isinstance(value, torch.Tensor):
            shapes[key] = tuple(value.shape)
        elif isinstance(value, (list, tuple, torch.Size)) and all(
            isinstance(s, int) and not isinstance(s, bool) for s in value
        ):
            shapes[key] = tuple(int(s) for s in value)
        else:
            raise TypeError(f"state_dict_or_manifest[{key!r}] must be a tensor or a shape (list of ints), "
                            f"got {type(value).__name__}")
    return shapes


def _children(shapes: Mapping[str, tuple[int, ...]], group: str) -> dict[int, dict[int, set[str]]]:
    """block index -> sub-module index -> attribute names found under ``group`` (e.g. input_blocks)."""
    out: dict[int, dict[int, set[str]]] = {}
    for key in shapes:
        m = _BLOCK_KEY.match(key)
        if m and m.group(1) == group:
            out.setdefault(int(m.group(2)), {}).setdefault(int(m.group(3)), set()).add(m.group(4))
    return out


def _need(shapes: Mapping[str, tuple[int, ...]], key: str, ndim: int | None = None) -> tuple[int, ...]:
    if key not in shapes:
        raise ValueError(f"not an ADM (guided-diffusion UNet) state dict: key {key!r} is missing")
    shape = shapes[key]
    if ndim is not None and len(shape) != ndim:
        raise ValueError(f"not a 2-D ADM state dict: {key!r} has shape {list(shape)}, expected {ndim} dims")
    return shape


def infer_adm_config(
    state_dict_or_manifest: Mapping[str, Any], image_size: int | None = None, **options: Any
) -> ADMConfig:
    """Derive the :class:`ADMConfig` of a guided-diffusion UNet from its state-dict keys and shapes alone.

    ``state_dict_or_manifest`` maps key -> tensor, or key -> shape (a list of ints, as in the JSON
    manifests). Derived: model/in/out channels, channel_mult, num_res_blocks, attention downsampling
    factors, scale-shift norm, resblock up/down vs. conv resampling, learn_sigma (6 output channels for 3
    input ones) and num_classes (a ``label_emb``). ``options`` set what shapes cannot tell:
    ``num_head_channels`` (default 64, as in every public 256x256 ADM), ``num_heads`` (default 4, used when
    num_head_channels=-1), ``num_heads_upsample``, ``use_new_attention_order`` (default False: legacy
    ordering), ``dropout`` and ``use_checkpoint``. ``image_size`` is recorded for information only.
    """
    valid = sorted(set(_FREE_OPTIONS) - {"image_size"})
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"infer_adm_config: unknown option(s) {unknown}; valid options: {valid} "
                        "(and image_size, the second argument)")
    shapes = _shape_table(state_dict_or_manifest)

    te0 = _need(shapes, "time_embed.0.weight", 2)
    model_channels = te0[1]
    if te0[0] != 4 * model_channels:
        raise ValueError(f"time_embed.0.weight has shape {list(te0)}; an ADM UNet has [4*C, C]")
    in_channels = _need(shapes, "input_blocks.0.0.weight", 4)[1]
    out_channels = _need(shapes, "out.2.weight", 4)[0]
    num_classes = shapes["label_emb.weight"][0] if "label_emb.weight" in shapes else None

    inputs = _children(shapes, "input_blocks")
    outputs = _children(shapes, "output_blocks")
    if not outputs:
        raise ValueError("not an ADM state dict: no output_blocks.* keys")
    n_out = max(outputs) + 1
    if sorted(outputs) != list(range(n_out)):
        raise ValueError(f"output_blocks indices are not contiguous: {sorted(outputs)}")

    # The up-sampling module is the last child of the last output block of every level but the lowest
    # resolution one: a ResBlock (resblock_updown) or an Upsample with a conv. Its position tells
    # num_res_blocks, because every level has num_res_blocks + 1 output blocks.
    def up_kind(children: dict[int, set[str]]) -> str | None:
        for j in sorted(children):
            if j == 0 or "qkv" in children[j]:
                continue
            if "in_layers" in children[j]:
                return "resblock"
            if "conv" in children[j]:
                return "conv"
            raise ValueError(f"unrecognised output block child with attributes {sorted(children[j])}")
        return None

    ups = {k: up_kind(outputs[k]) for k in range(n_out)}
    up_blocks = [k for k in range(n_out) if ups[k] is not None]
    n_in = max(inputs) + 1 if inputs else 0
    if up_blocks:
        num_res_blocks = up_blocks[0]
        kinds = {ups[k] for k in up_blocks}
        if len(kinds) != 1:
            raise ValueError("output blocks mix ResBlock and conv up-sampling")
        resblock_updown = kinds == {"resblock"}
        conv_resample = True
    else:
        # No up-sampling parameters: either a single level, or parameter-free (nearest / avg-pool)
        # resampling, whose input blocks leave gaps in the numbering.
        missing = sorted(set(range(1, n_in)) - set(inputs))
        num_res_blocks = missing[0] - 1 if missing else n_out - 1
        resblock_updown = False
        conv_resample = not missing
    levels, rem = divmod(n_out, num_res_blocks + 1)
    if rem or levels < 1:
        raise ValueError(f"{n_out} output blocks do not split into levels of num_res_blocks+1="
                         f"{num_res_blocks + 1}")
    expected_ups = [level * (num_res_blocks + 1) + num_res_blocks for level in range(levels - 1)]
    if up_blocks and up_blocks != expected_ups:
        raise ValueError(f"up-sampling blocks at output indices {up_blocks}, expected {expected_ups} "
                         f"for num_res_blocks={num_res_blocks}")
    if n_in != n_out:
        raise ValueError(f"{n_in} input blocks but {n_out} output blocks; an ADM UNet has as many of each")

    # Per level (lowest resolution first in the output blocks): channels, attention, conditioning mode.
    channel_mult: list[float] = [0.0] * levels
    attention_ds: list[int] = []
    scale_shift: set[bool] = set()
    for rank in range(levels):
        level = levels - 1 - rank
        k = rank * (num_res_blocks + 1)
        conv = _need(shapes, f"output_blocks.{k}.0.in_layers.2.weight", 4)
        ch = conv[0]
        mult = ch / model_channels
        if int(mult * model_channels) != ch:
            raise ValueError(f"level {level} has {ch} channels, not a multiple of model_channels "
                             f"{model_channels} the reference could produce")
        channel_mult[level] = mult
        if any("qkv" in attrs for j, attrs in outputs[k].items() if j > 0):
            attention_ds.append(2**level)
        emb = _need(shapes, f"output_blocks.{k}.0.emb_layers.1.weight", 2)
        if emb[0] not in (ch, 2 * ch):
            raise ValueError(f"output_blocks.{k}.0.emb_layers.1.weight has {emb[0]} rows for {ch} channels")
        scale_shift.add(emb[0] == 2 * ch)
    if len(scale_shift) != 1:
        raise ValueError("ResBlocks disagree on scale-shift norm")

    kwargs: dict[str, Any] = {
        "model_channels": model_channels,
        "channel_mult": tuple(channel_mult),
        "num_res_blocks": num_res_blocks,
        "attention_ds": tuple(sorted(attention_ds)),
        "in_channels": in_channels,
        "out_channels": out_channels,
        "use_scale_shift_norm": scale_shift.pop(),
        "resblock_updown": resblock_updown,
        "conv_resample": conv_resample,
        "num_classes": num_classes,
        "image_size": image_size,
    }
    kwargs.update(options)
    return ADMConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# Building blocks


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding (B,) -> (B, dim), float32: [cos(t f_i), sin(t f_i)] with f_i = P^(-i/half).

    Timesteps may be fractional. An odd ``dim`` gets one trailing zero column, as in the reference.
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    angles = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32 groups) computed in float32 whatever the weights' dtype, result in the input dtype.

    fp16 statistics over large groups lose too much precision; the reference does the same upcast.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(32, channels, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # float32 for half types; float64 stays float64 (exact finite-difference checks need it).
        dtype = torch.promote_types(x.dtype, torch.float32)
        w = None if self.weight is None else self.weight.to(dtype)
        b = None if self.bias is None else self.bias.to(dtype)
        return F.group_norm(x.to(dtype), self.num_groups, w, b, self.eps).to(x.dtype)


class _EmbedBlock(nn.Module):
    """Marker: a block whose forward takes the timestep embedding as second argument."""

    use_checkpoint: bool = False

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.use_checkpoint and torch.is_grad_enabled():
            # Recompute activations in the backward pass instead of storing them (non-reentrant: works
            # when only the input, not the weights, requires grad, as in posterior sampling).
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)


class EmbedSequential(nn.Sequential):
    """nn.Sequential that hands the embedding to the children that take it (keeps ``.0.``, ``.1.`` keys)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _EmbedBlock) else layer(x)
        return x


class Downsample(nn.Module):
    """Halve H and W: a stride-2 3x3 conv (key ``op``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.channels = channels
        if use_conv:
            self.op: nn.Module = nn.Conv2d(channels, channels, 3, stride=2, padding=1)
        else:
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour repetition, optionally followed by a 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool) -> None:
        super().__init__()
        self.channels = channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(_EmbedBlock):
    """Residual block conditioned on the timestep embedding, optionally resampling (up or down).

    Keys: ``in_layers.{0: norm, 2: conv}``, ``emb_layers.1`` (linear), ``out_layers.{0: norm, 3: conv}``,
    ``skip_connection`` (1x1 conv when the channel count changes). With scale-shift norm the embedding
    gives (scale, shift) applied after the second GroupNorm as ``norm(h) * (1 + scale) + shift``;
    otherwise it is added before it. When resampling, both the residual path (between the first norm+SiLU
    and its conv) and the skip path are resampled without parameters.
    """

    def __init__(self, channels: int, emb_channels: int, out_channels: int, *, dropout: float,
                 use_scale_shift_norm: bool, up: bool = False, down: bool = False,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.use_checkpoint = use_checkpoint
        self.in_layers = nn.Sequential(GroupNorm32(channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.updown = up or down
        if up:
            self.h_upd: nn.Module = Upsample(channels, False)
            self.x_upd: nn.Module = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(GroupNorm32(out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        if out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        norm_in, act_in, conv_in = self.in_layers
        h = act_in(norm_in(x))
        if self.updown:
            h = self.h_upd(h)
            x = self.x_upd(x)
        h = conv_in(h)
        cond = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        norm_out, act_out, drop, conv_out = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = cond.chunk(2, dim=1)
            h = norm_out(h) * (1 + scale) + shift
        else:
            h = norm_out(h + cond)
        h = conv_out(drop(act_out(h)))
        return self.skip_connection(x) + h


class AttentionBlock(_EmbedBlock):
    """Multi-head self-attention over all spatial positions, with a residual connection.

    Keys: ``norm``, ``qkv`` (1x1 Conv1d to 3C), ``proj_out`` (1x1 Conv1d). The qkv channels are split
    per head first and then into q, k, v (legacy order) or into q, k, v first and then per head (new
    order); the two orders need different weights, so the option must match the checkpoint.
    """

    def __init__(self, channels: int, num_heads: int, *, new_order: bool = False,
                 use_checkpoint: bool = False) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"AttentionBlock: {channels} channels do not split into {num_heads} heads")
        self.channels = channels
        self.num_heads = num_heads
        self.new_order = new_order
        self.use_checkpoint = use_checkpoint
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(self._forward, x, emb, use_reentrant=False)
        return self._forward(x, emb)

    def _forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        b, c, height, width = x.shape
        tokens = x.reshape(b, c, height * width)
        qkv = self.qkv(self.norm(tokens))  # (B, 3C, T)
        n, d, t = self.num_heads, c // self.num_heads, height * width
        if self.new_order:
            q, k, v = qkv.reshape(b, 3, n, d, t).unbind(1)
        else:
            q, k, v = qkv.reshape(b, n, 3 * d, t).split(d, dim=2)
        # (B, heads, T, d): softmax(q k^T / sqrt(d)) v, computed by the fused kernel where available.
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        h = self.proj_out(out.transpose(-1, -2).reshape(b, c, t))
        return (tokens + h).reshape(b, c, height, width)


# ---------------------------------------------------------------------------------------------------------
# The UNet


class ADMUNet(nn.Module):
    """The ADM UNet: ``forward(x, timesteps, y=None) -> (B, out_channels, H, W)``.

    ``x`` is (B, in_channels, H, W) (images in [-1, 1] at the network's noise level), ``timesteps`` a
    scalar or (B,) tensor of (possibly fractional) diffusion steps in [0, 1000), ``y`` the (B,) class
    labels of a class-conditional model. Sizes that are not a multiple of 2^(levels-1) are reflect-padded
    up to one and the output is cropped back (the reference only accepts multiples). Weights may be
    float32, float16 or bfloat16; GroupNorm and the attention softmax run in float32, and the output has
    the dtype of ``x``.
    """

    def __init__(self, config: ADMConfig) -> None:
        super().__init__()
        if not isinstance(config, ADMConfig):
            raise TypeError(f"ADMUNet(config): config must be an ADMConfig, got {type(config).__name__}")
        self.config = config
        c = config
        emb_dim = c.time_embed_dim
        self.time_embed = nn.Sequential(nn.Linear(c.model_channels, emb_dim), nn.SiLU(),
                                        nn.Linear(emb_dim, emb_dim))
        if c.num_classes is not None:
            self.label_emb = nn.Embedding(c.num_classes, emb_dim)

        def res(cin: int, cout: int, **kw: bool) -> ResBlock:
            return ResBlock(cin, emb_dim, cout, dropout=c.dropout,
                            use_scale_shift_norm=c.use_scale_shift_norm, **kw)

        def attn(ch: int, upsample: bool = False) -> AttentionBlock:
            return AttentionBlock(ch, c.heads_for(ch, upsample), new_order=c.use_new_attention_order)

        ch = c.level_channels(0)
        self.input_blocks = nn.ModuleList([EmbedSequential(nn.Conv2d(c.in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        for level in range(c.num_levels):
            ds = 2**level
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [res(ch, c.level_channels(level))]
                ch = c.level_channels(level)
                if ds in c.attention_ds:
                    layers.append(attn(ch))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level < c.num_levels - 1:
                down = res(ch, ch, down=True) if c.resblock_updown else Downsample(ch, c.conv_resample)
                self.input_blocks.append(EmbedSequential(down))
                skip_chans.append(ch)

        self.middle_block = EmbedSequential(res(ch, ch), attn(ch), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level in reversed(range(c.num_levels)):
            ds = 2**level
            for i in range(c.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), c.level_channels(level))]
                ch = c.level_channels(level)
                if ds in c.attention_ds:
                    layers.append(attn(ch, upsample=True))
                if level > 0 and i == c.num_res_blocks:
                    up = res(ch, ch, up=True) if c.resblock_updown else Upsample(ch, c.conv_resample)
                    layers.append(up)
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(ch, c.out_channels, 3, padding=1))
        self._init_zero_layers()
        self.use_checkpoint = c.use_checkpoint

    def _init_zero_layers(self) -> None:
        # Residual-branch output convs start at zero, so a fresh network is the identity on its skips
        # (this only matters for training from scratch; checkpoints overwrite it).
        targets = [self.out[2]]
        for m in self.modules():
            if isinstance(m, ResBlock):
                targets.append(m.out_layers[3])
            elif isinstance(m, AttentionBlock):
                targets.append(m.proj_out)
        with torch.no_grad():
            for layer in targets:
                if layer.weight.device.type != "meta":
                    for p in layer.parameters():
                        p.zero_()

    # Options --------------------------------------------------------------------------------------------
    @property
    def use_checkpoint(self) -> bool:
        """Gradient checkpointing of every ResBlock and AttentionBlock (saves memory in backward)."""
        return self._use_checkpoint

    @use_checkpoint.setter
    def use_checkpoint(self, enabled: bool) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"use_checkpoint must be a bool, got {type(enabled).__name__}")
        self._use_checkpoint = enabled
        for m in self.modules():
            if isinstance(m, _EmbedBlock):
                m.use_checkpoint = enabled

    @property
    def dtype(self) -> torch.dtype:
        return self.time_embed[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.time_embed[0].weight.device

    # Forward --------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | float, y: torch.Tensor | None = None
                ) -> torch.Tensor:
        c = self.config
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != c.in_channels:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"ADMUNet: x must be a (B, {c.in_channels}, H, W) tensor, got {got}")
        if not x.is_floating_point():
            raise TypeError(f"ADMUNet: x must be a floating-point tensor, got {x.dtype}")
        batch = x.shape[0]
        t = torch.as_tensor(timesteps, device=x.device)
        if t.dim() == 0 or t.shape == (1,):
            t = t.reshape(1).expand(batch)
        elif t.shape != (batch,):
            raise ValueError(f"ADMUNet: timesteps must be a scalar or of shape ({batch},), "
                             f"got {tuple(t.shape)}")
        if (y is None) != (c.num_classes is None):
            raise ValueError("ADMUNet: pass y (class labels) if and only if the model is class-conditional "
                             f"(num_classes={c.num_classes})")

        emb = self.time_embed(timestep_embedding(t, c.model_channels).to(self.dtype))
        if y is not None:
            if not isinstance(y, torch.Tensor) or y.shape != (batch,) or y.is_floating_point():
                raise ValueError(f"ADMUNet: y must be an integer tensor of shape ({batch},)")
            emb = emb + self.label_emb(y.to(x.device))

        # Pad to a multiple of the total downsampling so every skip connection lines up.
        height, width = x.shape[-2:]
        factor = 2 ** (c.num_levels - 1)
        pad_h, pad_w = (-height) % factor, (-width) % factor
        h = x.to(self.dtype)
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            h = F.pad(h, (0, pad_w, 0, pad_h), mode=mode)

        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        out = self.out(h)
        return out[..., :height, :width].to(x.dtype)

    # Construction from weights --------------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], strict: bool = True,
                        dtype: torch.dtype | None = None, image_size: int | None = None,
                        **options: Any) -> ADMUNet:
        """Build the network that ``state_dict`` describes (see :func:`infer_adm_config`) and load it.

        ``options`` are the shape-free config options of :func:`infer_adm_config`. With ``strict`` every
        key and shape must match (a ValueError lists the differences) and the tensors are adopted without a
        copy; otherwise missing weights keep their initialisation and extra keys are ignored. The result
        is in eval mode, on the state dict's device, in ``dtype`` (default float32).
        """
        config = infer_adm_config(state_dict, image_size, **options)
        if strict:
            with torch.device("meta"):
                model = cls(config)
            expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
            got = {k: tuple(v.shape) for k, v in state_dict.items()}
            problems = [f"missing {k}" for k in expected if k not in got]
            problems += [f"unexpected {k}" for k in got if k not in expected]
            problems += [f"{k}: shape {list(got[k])}, expected {list(s)}"
                         for k, s in expected.items() if k in got and got[k] != s]
            if problems:
                more = f" (and {len(problems) - 12} more)" if len(problems) > 12 else ""
                raise ValueError("state dict does not match the ADM architecture inferred from it: "
                                 + "; ".join(problems[:12]) + more)
            model.load_state_dict(dict(state_dict), strict=True, assign=True)
        else:
            model = cls(config)
            model.load_state_dict(dict(state_dict), strict=False)
        model = model.to(dtype or torch.float32)
        return model.eval()


# ---------------------------------------------------------------------------------------------------------
# Files


class UnsafeCheckpointError(ValueError):
    """A ``.pt`` checkpoint that can only be loaded by running pickled code (refused)."""


_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model", "ema_model", "ema")


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def read_adm_state_dict(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint's tensors (on CPU) and its safetensors metadata (empty for ``.pt``).

    ``.pt`` / ``.pth`` / ``.ckpt`` go through ``torch.load(weights_only=True)``: a file that needs
    unpickling code raises :class:`UnsafeCheckpointError`. A state dict nested under ``state_dict`` /
    ``model`` / ``ema`` ... is unwrapped, and a DataParallel ``module.`` prefix is removed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"ADM checkpoint not found: {path}")
    ext = os.path.splitext(path)[1].lower()
    metadata: dict[str, str] = {}
    if ext == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    elif ext in (".pt", ".pth", ".ckpt", ".bin"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsafeCheckpointError(
                f"{path}: refusing to load this checkpoint: it contains pickled Python objects that only "
                "arbitrary code could rebuild, and it is read with torch.load(weights_only=True). Convert "
                f"it to a plain state dict or .safetensors in a trusted environment. ({err})"
            ) from err
        state = obj
        if not _is_tensor_mapping(state) and isinstance(state, Mapping):
            for key in _NESTED_STATE_KEYS:
                if _is_tensor_mapping(state.get(key)):
                    state = state[key]
                    break
        if not _is_tensor_mapping(state):
            top = sorted(map(str, obj))[:10] if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"{path}: expected a state dict (a mapping of name -> tensor), found {top}")
        state = dict(state)
    else:
        raise ValueError(f"{path}: unsupported checkpoint extension {ext!r}; expected .pt, .pth, .ckpt, "
                         ".bin or .safetensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, metadata


def load_adm_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, **options: Any) -> ADMUNet:
    """Load an ADM UNet from ``.pt``/``.pth`` (``weights_only=True``) or ``.safetensors``, in eval mode.

    The architecture is inferred from the keys and shapes; shape-free options (``num_head_channels``,
    ``num_heads``, ``num_heads_upsample``, ``use_new_attention_order``, ``dropout``, ``use_checkpoint``,
    ``image_size``) come from ``options``, else from a config saved by :func:`save_adm_safetensors`, else
    from the defaults of the public checkpoints. ``dtype`` defaults to float32.
    """
    unknown = sorted(set(options) - set(_FREE_OPTIONS))
    if unknown:
        raise TypeError(f"load_adm_checkpoint: unknown option(s) {unknown}; valid options: "
                        f"{sorted(_FREE_OPTIONS)}")
    state, metadata = read_adm_state_dict(path)
    merged: dict[str, Any] = {}
    if CONFIG_METADATA_KEY in metadata:
        try:
            saved = json.loads(metadata[CONFIG_METADATA_KEY])
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: metadata {CONFIG_METADATA_KEY!r} is not valid JSON ({err})") from err
        merged.update({k: v for k, v in saved.items() if k in _FREE_OPTIONS and k != "use_checkpoint"})
    merged.update(options)
    image_size = merged.pop("image_size", None)
    model = ADMUNet.from_state_dict(state, strict=True, dtype=dtype, image_size=image_size, **merged)
    if CONFIG_METADATA_KEY in metadata:
        saved_config = ADMConfig.from_dict(saved)
        derived = {k: v for k, v in model.config.to_dict().items() if k not in _FREE_OPTIONS}
        stored = {k: v for k, v in saved_config.to_dict().items() if k not in _FREE_OPTIONS}
        if derived != stored:
            raise ValueError(f"{path}: the config in the file's metadata disagrees with its tensors: "
                             f"{stored} vs {derived}")
    return model.to(device)


def save_adm_safetensors(model: ADMUNet, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s weights to ``.safetensors`` with its full config as JSON metadata."""
    if not isinstance(model, ADMUNet):
        raise TypeError(f"save_adm_safetensors: model must be an ADMUNet, got {type(model).__name__}")
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, os.fspath(path), metadata={
        "format": "pt", CONFIG_METADATA_KEY: json.dumps(model.config.to_dict(), sort_keys=True),
    })
