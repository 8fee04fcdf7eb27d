"""Train the pixel-space diffusion prior on Fashion-MNIST TRAIN images (32x32x1 in [-1, 1]).

``python -m train.pixel_prior`` (needs ``apt-get install -y dataset-fashion-mnist``) writes
``weights/fashion_pixel_prior.safetensors``: a SmallUNet (channels 32/64/64 at 32/16/8 px, one residual
block per level, self-attention at 8x8) in EDM preconditioning; see :mod:`train.diffusion` for the loss
and the noise-level distribution. The last 1,000 training images are held out for validation.
"""

from __future__ import annotations

import argparse

from samplers.models.fashion import PIXEL_PRIOR_FILE

from .common import setup
from .diffusion import add_arguments, train_edm
from .fashion_data import load_split

VALIDATION = 1000
UNET = {"in_channels": 1, "base_channels": 32, "channel_mult": (1, 2, 2), "num_res_blocks": 1,
        "attention": True, "emb_dim": 128, "dropout": 0.0}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p, steps=2000, batch=32, lr=5e-4, ema=0.995, max_minutes=25.0, out=PIXEL_PRIOR_FILE)
    args = p.parse_args(argv)
    gen = setup(args.seed, args.threads)
    images, _ = load_split("train")
    train_edm("pixel_prior", images[:-VALIDATION], images[-VALIDATION:], UNET, args, gen=gen)


if __name__ == "__main__":
    main()
