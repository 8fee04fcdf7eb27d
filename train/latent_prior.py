"""Train the latent diffusion prior on the autoencoder's scaled latents of Fashion-MNIST TRAIN images.

``python -m train.latent_prior`` needs ``weights/fashion_autoencoder.safetensors`` (``train.autoencoder``)
and the Debian data; it encodes the training images to (B, 4, 8, 8) latents with ``encode`` (posterior
mean times the stored scale factor, so about unit std), trains a SmallUNet (channels 64/64 at 8/4
px, one residual block per level, self-attention at 4x4) in EDM preconditioning on them (see
:mod:`train.diffusion`), and writes ``weights/fashion_latent_prior.safetensors`` with the scale factor
in its metadata. The last 1,000 training images are held out for validation.
"""

from __future__ import annotations

import argparse

import torch

from samplers.models.fashion import LATENT_PRIOR_FILE, load_autoencoder

from .common import setup
from .diffusion import add_arguments, train_edm
from .fashion_data import load_split

VALIDATION = 1000
UNET = {"in_channels": 4, "base_channels": 64, "channel_mult": (1, 1), "num_res_blocks": 1,
        "attention": True, "emb_dim": 128, "dropout": 0.0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p, steps=4000, batch=64, lr=5e-4, ema=0.998, max_minutes=25.0, out=LATENT_PRIOR_FILE)
    args = p.parse_args(argv)
    gen = setup(args.seed, args.threads)
    ae = load_autoencoder()
    images, _ = load_split("train")
    with torch.no_grad():
        latents = torch.cat([ae.encode(x) for x in images.split(500)])
    scale = float(ae.scale_factor)
    print(f"latents {tuple(latents.shape)}: mean {latents.mean():.3f}, std {latents.std():.3f}, "
          f"scale {scale:.5f}")
    train_edm("latent_prior", latents[:-VALIDATION], latents[-VALIDATION:], UNET, args,
              extra_meta={"latent_scale_factor": scale, "autoencoder": "fashion_autoencoder.safetensors"},
              gen=gen)


if __name__ == "__main__":
    main()
