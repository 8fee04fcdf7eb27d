"""Tiny random-weight stand-ins of the Fashion-MNIST models, shared by the benchmark tests."""

from __future__ import annotations

import pytest
import torch

from bench import tasks
from samplers.equireg import SmallCNN
from samplers.models.autoencoder import KLAutoencoder
from samplers.models.small_unet import EDMDenoiser, SmallUNet


def tiny_models() -> tasks.Models:
    """Pixel and latent priors, autoencoder and MPE network with the real architectures, tiny and seeded."""
    torch.manual_seed(0)
    ae = KLAutoencoder(channels=(4, 8, 8)).eval().requires_grad_(False)

    def unet(c):
        return SmallUNet(in_channels=c, base_channels=8, channel_mult=(1,), attention=False, emb_dim=16)

    pixel = EDMDenoiser(unet(1), 0.5).eval().requires_grad_(False)
    latent = EDMDenoiser(unet(4), 1.0).eval().requires_grad_(False)
    mpe = SmallCNN(in_channels=1, base_channels=4, num_blocks=1).eval().requires_grad_(False)
    priors = {"pixel": tasks.Prior("pixel", pixel, (1, 32, 32), sigma_max=10.0),
              "latent": tasks.Prior("latent", latent, (4, 8, 8), ae.decode, ae.encode, sigma_max=10.0)}
    return tasks.Models(priors, mpe, ae)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread (as the CLIs use): on a shared 2-core machine more threads only contend.
    Autouse in every test module that imports it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
