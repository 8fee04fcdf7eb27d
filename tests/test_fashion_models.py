"""Tests of the trained Fashion-MNIST priors, autoencoder and MPE function (samplers.models.fashion).

They use only the committed weights and the 64 held-out test images (data/fashion_test64.safetensors);
no training and no Debian data are needed.
"""

from __future__ import annotations

import math

import pytest
import torch

from samplers.models.autoencoder import KLAutoencoder
from samplers.models.fashion import (
    AUTOENCODER_FILE,
    DEGRADATIONS,
    LATENT_PRIOR_FILE,
    MAX_WEIGHTS_BYTES,
    MPE_FILE,
    PIXEL_PRIOR_FILE,
    degrade,
    load_autoencoder,
    load_edm_denoiser,
    load_latent_prior,
    load_mpe,
    load_pixel_prior,
    load_test_images,
    load_validation_images,
    read_metadata,
    relative_equivariance_error,
    save_edm_denoiser,
)
from samplers.models.small_unet import EDMDenoiser, SmallUNet

# Measured on the 64 test images with the committed autoencoder: see docs/training.md. The floor
# leaves about 1 dB of margin below the measured 28.59 dB.
AE_PSNR_FLOOR_DB = 27.5


@pytest.fixture(scope="module")
def test_images() -> torch.Tensor:
    return load_test_images()[0]


@pytest.fixture(scope="module")
def pixel_prior() -> EDMDenoiser:
    return load_pixel_prior()


@pytest.fixture(scope="module")
def autoencoder() -> KLAutoencoder:
    return load_autoencoder()


@pytest.fixture(scope="module")
def latent_prior(autoencoder: KLAutoencoder) -> EDMDenoiser:
    return load_latent_prior(autoencoder=autoencoder)


# ------------------------------------------------------------------------------------------- data


def test_test_subset() -> None:
    images, labels = load_test_images()
    assert images.shape == (64, 1, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (64,) and labels.dtype == torch.int64
    assert images.min() >= -1 and images.max() <= 1
    # The 2-pixel padding of the 28x28 originals holds the background value -1.
    assert torch.all(images[..., :2, :] == -1) and torch.all(images[..., :, -2:] == -1)
    assert set(labels.tolist()) <= set(range(10)) and len(set(labels.tolist())) == 10
    assert load_test_images(5)[0].shape == (5, 1, 32, 32)
    with pytest.raises(ValueError, match="n must be"):
        load_test_images(65)


def test_validation_subset_is_held_out_training_data() -> None:
    from safetensors.torch import load_file

    from samplers.models.fashion import VALIDATION_IMAGES_FILE

    images, labels = load_validation_images()
    assert images.shape == (32, 1, 32, 32) and labels.shape == (32,)
    assert images.min() >= -1 and images.max() <= 1
    # Drawn from the last 1,000 of the 60,000 TRAIN images, which no training script uses.
    idx = load_file(str(VALIDATION_IMAGES_FILE))["indices"]
    assert idx.min() >= 59_000 and idx.max() < 60_000 and len(set(idx.tolist())) == 32
    # Not the test images: no validation image equals a test image.
    test = load_test_images()[0]
    assert not any(torch.equal(v, t) for v in images for t in test)
    assert load_validation_images(4)[0].shape == (4, 1, 32, 32)
    with pytest.raises(ValueError, match="validation images"):
        load_validation_images(33)


@pytest.mark.parametrize("path", [PIXEL_PRIOR_FILE, LATENT_PRIOR_FILE, AUTOENCODER_FILE, MPE_FILE])
def test_weight_files_small_with_metadata(path) -> None:
    assert path.stat().st_size <= MAX_WEIGHTS_BYTES
    if path != MPE_FILE:
        meta = read_metadata(path)
        assert {"kind", "config", "training"} <= set(meta)
        assert meta["training"]["steps"] > 0 and math.isfinite(meta["training"]["wall_time_s"])


# --------------------------------------------------------------------------------- EDM denoiser


def test_edm_preconditioning_matches_definition() -> None:
    # A fresh SmallUNet outputs exactly 0 (zero-initialised last conv), so D(x, sigma) = c_skip x.
    torch.manual_seed(0)
    model = EDMDenoiser(SmallUNet(in_channels=1, base_channels=8, channel_mult=(1, 2)), sigma_data=0.5)
    x = torch.randn(3, 1, 16, 16)
    sigma = torch.tensor([0.01, 0.5, 20.0])
    expected = (0.25 / (sigma**2 + 0.25))[:, None, None, None] * x
    torch.testing.assert_close(model(x, sigma), expected)
    c_skip, c_out, c_in, c_noise = model.preconditioning(sigma)
    torch.testing.assert_close(c_skip, 0.25 / (sigma**2 + 0.25))
    torch.testing.assert_close(c_out, sigma * 0.5 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(c_in, 1 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(c_noise, sigma.log() / 4)


def test_denoiser_kwargs_and_sigma_validation(pixel_prior: EDMDenoiser, test_images: torch.Tensor) -> None:
    x = test_images[:2]
    # k-diffusion passes extra_args such as seed; they are accepted and do not change the output.
    torch.testing.assert_close(pixel_prior(x, 0.5, seed=3), pixel_prior(x, 0.5))
    with pytest.raises(TypeError, match="unknown keyword"):
        pixel_prior(x, 0.5, temperature=1.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        pixel_prior(x, 0.0)
    with pytest.raises(ValueError, match="one per sample"):
        pixel_prior(x, torch.ones(3))


def test_pixel_prior_batch_independent(pixel_prior: EDMDenoiser, test_images: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(1)
    x0 = test_images[:4]
    sigma = torch.tensor([0.05, 0.3, 1.0, 5.0])
    x = x0 + sigma[:, None, None, None] * torch.randn(x0.shape, generator=gen)
    batched = pixel_prior(x, sigma)
    single = torch.cat([pixel_prior(x[i: i + 1], sigma[i]) for i in range(4)])
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.05, 0.2, 0.5, 1.0, 3.0])
def test_pixel_prior_denoises(pixel_prior: EDMDenoiser, test_images: torch.Tensor, sigma: float) -> None:
    gen = torch.Generator().manual_seed(0)
    x0 = test_images[:32]
    noisy = x0 + sigma * torch.randn(x0.shape, generator=gen)
    with torch.no_grad():
        den = pixel_prior(noisy, sigma)
    mse_noisy = (noisy - x0).pow(2).mean()
    mse_den = (den - x0).pow(2).mean()
    # Better than identity by a clear factor (at least 2x lower MSE, i.e. > 3 dB).
    assert mse_den < 0.5 * mse_noisy, (float(mse_den), float(mse_noisy))
    # At high noise it must also beat the best constant image (the data mean of these 32 images).
    if sigma >= 1.0:
        assert mse_den < (x0 - x0.mean(0, keepdim=True)).pow(2).mean()


def test_pixel_prior_dtype_device_and_odd_size(pixel_prior: EDMDenoiser) -> None:
    x = torch.randn(2, 1, 37, 31, dtype=torch.float64)
    out = pixel_prior(x, torch.tensor([0.3, 2.0], dtype=torch.float64))
    assert out.shape == x.shape and out.dtype == torch.float64 and torch.isfinite(out).all()


def test_save_load_roundtrip(tmp_path, pixel_prior: EDMDenoiser, test_images: torch.Tensor) -> None:
    path = save_edm_denoiser(pixel_prior, tmp_path / "p.safetensors", training={"steps": 1})
    again = load_edm_denoiser(path)
    torch.testing.assert_close(again(test_images[:2], 0.7), pixel_prior(test_images[:2], 0.7))
    with pytest.raises(ValueError, match="expected 'edm_denoiser'"):
        load_edm_denoiser(AUTOENCODER_FILE)


# ---------------------------------------------------------------------------------- autoencoder


def test_autoencoder_shapes_and_scale(autoencoder: KLAutoencoder, test_images: torch.Tensor) -> None:
    z = autoencoder.encode(test_images)
    assert z.shape == (64, 4, 8, 8)
    assert autoencoder.decode(z).shape == (64, 1, 32, 32)
    # The stored scale factor brings the latents to about unit standard deviation.
    assert 0.7 < float(z.std()) < 1.4
    unscaled = autoencoder.decode_unscaled(z / autoencoder.scale_factor)
    torch.testing.assert_close(autoencoder.decode(z), unscaled)
    # Odd sizes: padded for encoding, cropped back on request.
    odd = torch.rand(2, 1, 37, 31) * 2 - 1
    assert autoencoder.encode(odd).shape == (2, 4, 10, 8)
    assert autoencoder(odd).shape == odd.shape


def test_autoencoder_reconstruction_psnr(autoencoder: KLAutoencoder, test_images: torch.Tensor) -> None:
    with torch.no_grad():
        rec = autoencoder(test_images).clamp(-1, 1)
    mse = (rec - test_images).pow(2).flatten(1).mean(1)
    psnr = 10 * torch.log10(4.0 / mse)
    assert float(psnr.mean()) > AE_PSNR_FLOOR_DB, float(psnr.mean())


def test_decode_is_differentiable(autoencoder: KLAutoencoder, test_images: torch.Tensor) -> None:
    z = autoencoder.encode(test_images[:2]).requires_grad_(True)
    loss = (autoencoder.decode(z) - test_images[:2]).pow(2).sum()
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Gradient check against a finite difference along a random direction.
    v = torch.randn_like(z)
    eps = 1e-3
    with torch.no_grad():
        fd = ((autoencoder.decode(z + eps * v) - test_images[:2]).pow(2).sum()
              - (autoencoder.decode(z - eps * v) - test_images[:2]).pow(2).sum()) / (2 * eps)
    assert abs(float(fd) - float((grad * v).sum())) < 0.02 * abs(float(fd)) + 1e-3


# -------------------------------------------------------------------------------- latent prior


def test_latent_prior_denoises(latent_prior: EDMDenoiser, autoencoder: KLAutoencoder,
                               test_images: torch.Tensor) -> None:
    z0 = autoencoder.encode(test_images[:32])
    gen = torch.Generator().manual_seed(0)
    for sigma in (0.1, 0.5, 2.0):
        noisy = z0 + sigma * torch.randn(z0.shape, generator=gen)
        with torch.no_grad():
            den = latent_prior(noisy, sigma)
        assert den.shape == z0.shape
        assert (den - z0).pow(2).mean() < 0.6 * (noisy - z0).pow(2).mean(), sigma


def test_latent_prior_checks_scale(autoencoder: KLAutoencoder) -> None:
    assert load_latent_prior().latent_scale_factor == pytest.approx(float(autoencoder.scale_factor))
    other = KLAutoencoder(scale_factor=float(autoencoder.scale_factor) * 2)
    with pytest.raises(ValueError, match="scale factor"):
        load_latent_prior(autoencoder=other)


# ----------------------------------------------------------------------------------------- MPE


def test_mpe_features(test_images: torch.Tensor) -> None:
    f = load_mpe()
    feats = f(test_images[:2])
    assert feats.shape == (2, 128, 4, 4)
    # Not equivariant by construction: a random input has a clearly nonzero error.
    err = relative_equivariance_error(f, torch.rand(4, 1, 32, 32) * 2 - 1, "hflip")
    assert err.shape == (4,) and bool((err > 1e-3).all())


def test_degrade_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="valid values"):
        degrade(torch.zeros(1, 1, 8, 8), "jpeg")


@pytest.mark.parametrize("group", ["hflip", "rot90"])
def test_mpe_premise(test_images: torch.Tensor, group: str) -> None:
    """The paper's premise: f is more equivariant on clean images than on degraded ones."""
    f = load_mpe()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        clean = relative_equivariance_error(f, test_images, group).mean()
        for kind in DEGRADATIONS:
            degraded = relative_equivariance_error(f, degrade(test_images, kind, generator=gen), group).mean()
            assert clean < degraded, (kind, float(clean), float(degraded))
