"""Unconditional samples of the trained priors, as a visual sanity check (``docs/fashion_samples.png``).

``python -m train.sample_grid`` draws 64 samples from the pixel prior and 64 from the latent prior
(decoded) with EDM's deterministic Heun sampler (Karras et al. 2022, Algorithm 1: rho = 7 noise
schedule from sigma_max = 80 to sigma_min = 0.002, ``--steps`` steps, 2 * steps - 1 network calls),
next to 64 held-out test images and their autoencoder reconstructions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from samplers.models.fashion import load_autoencoder, load_latent_prior, load_pixel_prior, load_test_images
from samplers.models.small_unet import EDMDenoiser

REPO = Path(__file__).resolve().parents[1]


def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0) -> torch.Tensor:
    """n noise levels from sigma_max down to sigma_min, then a final 0."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([s, s.new_zeros(1)])


@torch.no_grad()
def heun_sample(model: EDMDenoiser, shape: tuple[int, ...], steps: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    sigmas = karras_sigmas(steps).float()
    x = torch.randn(shape, generator=gen) * sigmas[0]
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = (x - model(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - model(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d2)
        x = x_next
    return x


def grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """(N, 1, H, W) in [-1, 1] -> (rows*H + pads, nrow*W + pads) grey image in [0, 1]."""
    n, _, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    out = torch.ones(rows * (h + 2) + 2, nrow * (w + 2) + 2)
    for i, img in enumerate(images.clamp(-1, 1)):
        r, c = divmod(i, nrow)
        out[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = (img[0] + 1) / 2
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=18)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=REPO / "docs" / "fashion_samples.png")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ae = load_autoencoder()
    test = load_test_images()[0]
    panels = {
        "held-out test images": test,
        "autoencoder reconstructions": ae(test),
        f"pixel prior samples (Heun, {args.steps} steps)": heun_sample(load_pixel_prior(), (64, 1, 32, 32),
                                                                      args.steps, args.seed),
        f"latent prior samples, decoded (Heun, {args.steps} steps)": ae.decode(
            heun_sample(load_latent_prior(autoencoder=ae), (64, 4, 8, 8), args.steps, args.seed)),
    }
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.4))
    for ax, (title, imgs) in zip(axes, panels.items(), strict=True):
        ax.imshow(grid(imgs.detach()).numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
