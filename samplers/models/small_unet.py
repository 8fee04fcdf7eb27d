"""A small UNet denoiser and the EDM preconditioning that turns it into a k-diffusion model.

The network :class:`SmallUNet` maps a (preconditioned) noisy input and a noise embedding to a raw
output ``F``. :class:`EDMDenoiser` wraps it in the preconditioning of Karras et al. 2022 ("EDM",
Table 1), so that it returns the denoised estimate in the variance-exploding (VE) convention of
k-diffusion / ComfyUI::

    x = x0 + sigma * noise,      D(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))

    c_in = 1 / sqrt(sigma^2 + sigma_data^2),   c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
    c_out = sigma * sigma_data / sqrt(sigma^2 + sigma_data^2),   c_noise = ln(sigma) / 4.

The same classes serve the pixel prior (32x32x1 Fashion-MNIST images in [-1, 1]) and the latent
prior (8x8x4 autoencoder latents scaled to about unit standard deviation); see
:mod:`samplers.models.fashion` for the trained instances.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["COMFY_EXTRA_ARGS", "EDMDenoiser", "SmallUNet", "edm_loss_weight", "unet_config_keys"]

#: Keyword arguments that k-diffusion / ComfyUI samplers pass to every model call (``extra_args``).
#: The priors here are unconditional, so these are accepted and have no effect; anything else is
#: rejected.
COMFY_EXTRA_ARGS: frozenset[str] = frozenset(
    {"seed", "cond", "uncond", "cond_scale", "model_options", "denoise_mask", "positive", "negative"}
)


def _groups(channels: int) -> int:
    # GroupNorm with up to 8 groups that divide the channel count (small nets, small groups).
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class _NoiseEmbedding(nn.Module):
    """Sinusoidal embedding of the scalar noise conditioning c_noise, followed by a small MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"emb_dim must be even, got {dim}")
        half = dim // 2
        # Frequencies spread over [1, 1000) like the transformer position embedding; c_noise is O(1).
        freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / half) * 100.0
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        arg = c_noise.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        emb = torch.cat([torch.cos(arg), torch.sin(arg)], dim=1).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)


class _ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, with the noise embedding as a per-channel scale and shift."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        # Zero-init the last conv so each block starts as the identity (stable early training).
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class _Attention(nn.Module):
    """Single-head self-attention over the spatial positions (used only at the coarsest level)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


_UNET_DEFAULTS: dict[str, Any] = {
    "in_channels": 1,
    "out_channels": None,
    "base_channels": 32,
    "channel_mult": (1, 2, 2),
    "num_res_blocks": 1,
    "attention": True,
    "emb_dim": 128,
    "dropout": 0.0,
}


def unet_config_keys() -> tuple[str, ...]:
    """Names of the :class:`SmallUNet` constructor options (stored in the weights' metadata)."""
    return tuple(_UNET_DEFAULTS)


class SmallUNet(nn.Module):
    """A compact UNet ``F(x, c_noise)`` for (B, C, H, W) inputs; output has ``out_channels`` channels.

    ``channel_mult`` gives the channel multiplier of each resolution level (len L -> L - 1 halvings).
    Inputs whose H or W is not a multiple of ``2 ** (L - 1)`` are reflect-padded and the output is
    cropped back, so any spatial size works (the trained weights are only meaningful at the training
    size). ``c_noise`` is a (B,) tensor (or a scalar) of the noise conditioning.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        attention: bool = True,
        emb_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("base_channels", base_channels),
                            ("num_res_blocks", num_res_blocks), ("emb_dim", emb_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        mult = tuple(int(m) for m in channel_mult)
        if not mult or any(m < 1 for m in mult):
            raise ValueError(f"channel_mult must be a non-empty sequence of positive ints, "
                             f"got {channel_mult!r}")
        out_channels = in_channels if out_channels is None else int(out_channels)
        self.config = {
            "in_channels": in_channels, "out_channels": out_channels, "base_channels": base_channels,
            "channel_mult": mult, "num_res_blocks": num_res_blocks, "attention": bool(attention),
            "emb_dim": emb_dim, "dropout": float(dropout),
        }
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.factor = 2 ** (len(mult) - 1)
        self.embed = _NoiseEmbedding(emb_dim)
        chs = [base_channels * m for m in mult]
        self.stem = nn.Conv2d(in_channels, chs[0], 3, padding=1)

        self.down = nn.ModuleList()
        skip_chs = [chs[0]]
        c = chs[0]
        for level, ch in enumerate(chs):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(_ResBlock(c, ch, emb_dim, dropout))
                c = ch
                skip_chs.append(c)
            down = nn.Conv2d(c, c, 3, stride=2, padding=1) if level < len(chs) - 1 else None
            if down is not None:
                skip_chs.append(c)
            self.down.append(nn.ModuleDict({"blocks": blocks, **({"down": down} if down else {})}))

        self.mid1 = _ResBlock(c, c, emb_dim, dropout)
        self.mid_attn = _Attention(c) if attention else nn.Identity()
        self.mid2 = _ResBlock(c, c, emb_dim, dropout)

        self.up = nn.ModuleList()
        for level in reversed(range(len(chs))):
            ch = chs[level]
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(_ResBlock(c + skip_chs.pop(), ch, emb_dim, dropout))
                c = ch
            up = nn.Conv2d(c, c, 3, padding=1) if level > 0 else None
            self.up.append(nn.ModuleDict({"blocks": blocks, **({"up": up} if up else {})}))

        self.out_norm = nn.GroupNorm(_groups(c), c)
        self.out_conv = nn.Conv2d(c, out_channels, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor | float) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        b, _, h, w = x.shape
        c_noise = torch.as_tensor(c_noise, device=x.device, dtype=torch.float32).reshape(-1)
        if c_noise.numel() == 1:
            c_noise = c_noise.expand(b)
        if c_noise.numel() != b:
            raise ValueError(f"c_noise must be a scalar or have {b} entries, got {c_noise.numel()}")
        ph, pw = (-h) % self.factor, (-w) % self.factor
        if ph or pw:
            # Reflect padding needs pad < size; replicate covers tiny inputs.
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        emb = self.embed(c_noise)
        hs = [self.stem(x)]
        hcur = hs[-1]
        for level in self.down:
            for block in level["blocks"]:
                hcur = block(hcur, emb)
                hs.append(hcur)
            if "down" in level:
                hcur = level["down"](hcur)
                hs.append(hcur)
        hcur = self.mid2(self.mid_attn(self.mid1(hcur, emb)), emb)
        for level in self.up:
            for block in level["blocks"]:
                hcur = block(torch.cat([hcur, hs.pop()], dim=1), emb)
            if "up" in level:
                hcur = level["up"](F.interpolate(hcur, scale_factor=2.0, mode="nearest"))
        out = self.out_conv(F.silu(self.out_norm(hcur)))
        return out[:, :, :h, :w]


def edm_loss_weight(sigma: torch.Tensor, sigma_data: float) -> torch.Tensor:
    """EDM's loss weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2 (= 1/c_out^2)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


class EDMDenoiser(nn.Module):
    """A k-diffusion denoiser ``D(x, sigma)`` returning x0 for ``x = x0 + sigma * noise``.

    ``model(x, sigma)`` takes x of shape (B, C, H, W) (images in [-1, 1] for the pixel prior, scaled
    latents for the latent prior) and sigma as a scalar or a (B,) tensor of noise levels > 0, and
    returns the denoised estimate of x0 with x's shape, dtype and device. Keyword arguments that
    k-diffusion / ComfyUI samplers pass (:data:`COMFY_EXTRA_ARGS`) are accepted and ignored (the
    model is unconditional); any other keyword raises ``TypeError``.
    """

    def __init__(self, net: SmallUNet, sigma_data: float, sigma_min: float = 0.002,
                 sigma_max: float = 80.0) -> None:
        super().__init__()
        if not isinstance(net, SmallUNet):
            raise TypeError(f"net must be a SmallUNet, got {type(net).__name__}")
        if not (sigma_data > 0 and 0 < sigma_min < sigma_max):
            raise ValueError(
                "need sigma_data > 0 and 0 < sigma_min < sigma_max, "
                f"got {sigma_data}, {sigma_min}, {sigma_max}"
            )
        self.net = net
        self.sigma_data = float(sigma_data)
        # The noise range the network was trained on (k-diffusion samplers read these attributes).
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def preconditioning(self, sigma: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return (c_skip, c_out, c_in, c_noise) for sigma of shape (B,)."""
        sd2 = self.sigma_data**2
        denom = (sigma**2 + sd2).sqrt()
        return sd2 / denom**2, sigma * self.sigma_data / denom, 1.0 / denom, sigma.log() / 4.0

    def forward(self, x: torch.Tensor, sigma: torch.Tensor | float, **kwargs: Any) -> torch.Tensor:
        unknown = sorted(set(kwargs) - COMFY_EXTRA_ARGS)
        if unknown:
            raise TypeError(
                f"unknown keyword argument(s) {unknown}; this unconditional denoiser accepts only the "
                f"sampler extra_args {sorted(COMFY_EXTRA_ARGS)} (which it ignores)"
            )
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"x must be a (B, C, H, W) tensor, got {getattr(x, 'shape', type(x))}")
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device, dtype=torch.float32).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(b)
        if sigma.numel() != b:
            raise ValueError(f"sigma must be a scalar or have {b} entries (one per sample), "
                             f"got {sigma.numel()}")
        if not bool((sigma > 0).all()):
            raise ValueError("sigma must be > 0 (the denoiser is undefined at sigma = 0)")
        # Compute in float32 at least (the ln(sigma) embedding and the c_* factors need it).
        work = torch.promote_types(x.dtype, torch.float32)
        xs = x.to(work)
        c_skip, c_out, c_in, c_noise = (c.to(work)[:, None, None, None] if i < 3 else c
                                        for i, c in enumerate(self.preconditioning(sigma.to(work))))
        param_dtype = next(self.net.parameters()).dtype
        raw = self.net((c_in * xs).to(param_dtype), c_noise).to(work)
        return (c_skip * xs + c_out * raw).to(x.dtype)

    def config(self) -> Mapping[str, Any]:
        """Everything needed to rebuild this module (saved as safetensors metadata)."""
        return {"unet": dict(self.net.config), "sigma_data": self.sigma_data,
                "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}
