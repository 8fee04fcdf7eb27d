"""A small KL autoencoder: (B, 1, 32, 32) images in [-1, 1] <-> (B, 4, 8, 8) latents.

Same design as Stable Diffusion's first stage, much smaller: a convolutional encoder predicts the
mean and log-variance of a diagonal Gaussian posterior q(z|x), the decoder maps z back to an image,
and training minimises reconstruction error plus a small KL term to N(0, I) (``train/autoencoder.py``).

``scale_factor`` (a buffer, stored with the weights) rescales the latents to about unit standard
deviation, as SD's 0.18215 does: :meth:`encode` returns ``scale_factor * mean`` and :meth:`decode`
divides by it first, so a latent diffusion prior trained on ``encode(x)`` and the solvers see one
consistent latent space. ``decode`` is differentiable (PSLD, ReSample and decoder-based EquiReg
backpropagate through it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["KLAutoencoder"]


def _groups(channels: int) -> int:
    for g in (8, 4, 2, 1):
        if channels % g == 0:
            return g
    return 1


class _Block(nn.Module):
    """Pre-activation residual block without conditioning."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class KLAutoencoder(nn.Module):
    """KL-regularised convolutional autoencoder with ``len(channels) - 1`` halvings of H and W.

    Defaults: 1 image channel, channels (32, 64, 64) -> downsampling factor 4, 4 latent channels, so a
    32x32x1 image has an 8x8x4 latent. Images are (B, C, H, W) in [-1, 1].
    """

    def __init__(
        self,
        in_channels: int = 1,
        latent_channels: int = 4,
        channels: Sequence[int] = (32, 64, 64),
        blocks_per_level: int = 1,
        scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        chs = tuple(int(c) for c in channels)
        if len(chs) < 2 or any(c < 1 for c in chs):
            raise ValueError(f"channels must list >= 2 positive ints, got {channels!r}")
        for name, value in (("in_channels", in_channels), ("latent_channels", latent_channels),
                            ("blocks_per_level", blocks_per_level)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not scale_factor > 0:
            raise ValueError(f"scale_factor must be > 0, got {scale_factor}")
        self.config = {"in_channels": in_channels, "latent_channels": latent_channels, "channels": chs,
                       "blocks_per_level": blocks_per_level}
        self.in_channels = in_channels
        self.latent_channels = latent_channels
        self.factor = 2 ** (len(chs) - 1)
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))

        enc: list[nn.Module] = [nn.Conv2d(in_channels, chs[0], 3, padding=1)]
        c = chs[0]
        for i, ch in enumerate(chs):
            for _ in range(blocks_per_level):
                enc.append(_Block(c, ch))
                c = ch
            if i < len(chs) - 1:
                enc.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        enc += [_Block(c, c), nn.GroupNorm(_groups(c), c), nn.SiLU(),
                nn.Conv2d(c, 2 * latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [nn.Conv2d(latent_channels, chs[-1], 3, padding=1), _Block(chs[-1], chs[-1])]
        c = chs[-1]
        for i, ch in enumerate(reversed(chs)):
            for _ in range(blocks_per_level):
                dec.append(_Block(c, ch))
                c = ch
            if i < len(chs) - 1:
                dec += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(c, c, 3, padding=1)]
        dec += [nn.GroupNorm(_groups(c), c), nn.SiLU(), nn.Conv2d(c, in_channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def _check(self, x: torch.Tensor, channels: int, name: str) -> None:
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != channels:
            got = getattr(x, "shape", type(x))
            raise ValueError(f"{name} must be a (B, {channels}, H, W) tensor, got {got}")

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        # Pad with the background value -1 so any H, W becomes a multiple of the downsampling factor.
        ph, pw = (-x.shape[-2]) % self.factor, (-x.shape[-1]) % self.factor
        return F.pad(x, (0, pw, 0, ph), value=-1.0) if ph or pw else x

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x) in the UNSCALED latent space (training uses these).

        H and W that are not multiples of the downsampling factor are padded with -1 at the bottom/right.
        """
        self._check(x, self.in_channels, "x")
        param_dtype = self.scale_factor.dtype
        moments = self.encoder(self._pad(x).to(param_dtype)).to(x.dtype)
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_unscaled(self, z: torch.Tensor) -> torch.Tensor:
        """Decode an UNSCALED latent (as drawn from :meth:`posterior`) to an image in about [-1, 1]."""
        self._check(z, self.latent_channels, "z")
        return self.decoder(z.to(self.scale_factor.dtype)).to(z.dtype)

    def encode(self, x: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Image (B, C, H, W) in [-1, 1] -> scaled latent (B, latent_channels, H/f, W/f).

        Returns ``scale_factor * mean`` (deterministic), or a posterior sample when ``sample=True``.
        """
        mean, logvar = self.posterior(x)
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + (0.5 * logvar).exp() * noise
        return mean * self.scale_factor.to(mean.dtype)

    def decode(self, z: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Scaled latent (B, latent_channels, h, w) -> image (B, C, f*h, f*w), differentiable in z.

        The output is not clamped (clamping would cut the gradient); ``out_size=(H, W)`` crops it to
        the size of an image that was padded in :meth:`encode`.
        """
        self._check(z, self.latent_channels, "z")
        img = self.decode_unscaled(z / self.scale_factor.to(z.dtype))
        if out_size is not None:
            h, w = (int(s) for s in out_size)
            if not (0 < h <= img.shape[-2] and 0 < w <= img.shape[-1]):
                raise ValueError(f"out_size must fit in the decoded size {tuple(img.shape[-2:])}, "
                                 f"got {out_size}")
            img = img[..., :h, :w]
        return img

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction decode(encode(x)), cropped to x's size."""
        return self.decode(self.encode(x), out_size=tuple(x.shape[-2:]))

    def full_config(self) -> dict[str, Any]:
        """Constructor options including the current scale factor (saved as weights metadata)."""
        return {**self.config, "scale_factor": float(self.scale_factor)}
