"""Noise models: seeded determinism, statistics, validation and the registry."""

from __future__ import annotations

import pytest
import torch

from samplers import operators as ops


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_registry() -> None:
    assert set(ops.NOISES) == {"gaussian", "poisson", "none"}
    assert isinstance(ops.make_noise("gaussian", sigma=0.1), ops.GaussianNoise)
    assert ops.make_noise("gaussian", sigma=0.1).sigma == 0.1
    assert isinstance(ops.make_noise("poisson", rate=2.0), ops.PoissonNoise)
    assert isinstance(ops.make_noise("none"), ops.NoNoise)
    with pytest.raises(ValueError, match="gaussian, poisson, none"):
        ops.make_noise("salt_pepper")
    with pytest.raises(TypeError, match="rate"):
        ops.make_noise("poisson", lam=1.0)


def test_gaussian_noise_statistics() -> None:
    sigma = 0.05
    y = torch.full((4, 3, 128, 128), 0.2, dtype=torch.float64)  # 196608 samples
    noisy = ops.GaussianNoise(sigma)(y, generator=_gen(0))
    residual = noisy - y
    n = residual.numel()
    # standard error of the std estimate is sigma / sqrt(2n) ~ 8e-5; of the mean sigma / sqrt(n) ~ 1.1e-4
    assert abs(residual.std().item() - sigma) < 6 * sigma / (2 * n) ** 0.5
    assert abs(residual.mean().item()) < 6 * sigma / n ** 0.5
    # independent across pixels: neighbouring residuals are uncorrelated
    corr = torch.corrcoef(torch.stack([residual[..., :-1].flatten(), residual[..., 1:].flatten()]))[0, 1]
    assert abs(corr.item()) < 0.02


def test_gaussian_noise_determinism_and_dtype() -> None:
    noise = ops.make_noise("gaussian", sigma=0.1)
    y = torch.zeros(2, 3, 8, 9)
    a = noise(y, generator=_gen(1))
    assert torch.equal(a, noise(y, generator=_gen(1)))
    assert not torch.equal(a, noise(y, generator=_gen(2)))
    assert a.dtype == torch.float32
    assert noise(y.double(), generator=_gen(1)).dtype == torch.float64
    # no generator: global RNG, still the right shape and not the input
    b = noise(y)
    assert b.shape == y.shape and not torch.equal(b, y)
    assert torch.equal(ops.GaussianNoise(0.0)(y, generator=_gen(0)), y)
    with pytest.raises(TypeError, match="Generator"):
        noise(y, generator=0)


def test_gaussian_noise_validation() -> None:
    with pytest.raises(ValueError, match="sigma"):
        ops.GaussianNoise(-0.1)
    with pytest.raises(TypeError, match="sigma"):
        ops.GaussianNoise("0.1")
    with pytest.raises(ValueError, match="sigma"):
        ops.GaussianNoise(float("nan"))


def test_poisson_noise_matches_dps_definition() -> None:
    rate = 0.5
    scale = 255.0 * rate
    level = 0.3  # in [0, 1] space; y = 2 * level - 1 in [-1, 1]
    y = torch.full((1, 3, 200, 200), 2 * level - 1, dtype=torch.float64)
    noisy = ops.PoissonNoise(rate)(y, generator=_gen(3))
    assert noisy.min() >= -1 and noisy.max() <= 1
    counts = (noisy + 1) / 2 * scale  # back to photon counts: must be integers
    torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-9)
    lam = level * scale
    n = counts.numel()
    # Poisson(lam): mean lam, variance lam (standard errors lam/n and ~lam*sqrt(2/n) + ...)
    assert abs(counts.mean().item() - lam) < 6 * (lam / n) ** 0.5
    assert abs(counts.var().item() / lam - 1) < 0.03
    # values are clamped into [0, 1] before counting, and the result back into [-1, 1]
    extreme = torch.tensor([[[[-3.0, 5.0]]]], dtype=torch.float64)
    out = ops.PoissonNoise(100.0)(extreme, generator=_gen(0))
    assert out[0, 0, 0, 0] == -1.0 and -1.0 <= out[0, 0, 0, 1] <= 1.0


def test_poisson_noise_determinism_and_validation() -> None:
    noise = ops.make_noise("poisson", rate=1.0)
    y = torch.rand(2, 3, 16, 16, generator=_gen(0)) * 2 - 1
    assert torch.equal(noise(y, generator=_gen(5)), noise(y, generator=_gen(5)))
    assert not torch.equal(noise(y, generator=_gen(5)), noise(y, generator=_gen(6)))
    assert noise(y.double(), generator=_gen(5)).dtype == torch.float64
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="rate"):
            ops.PoissonNoise(bad)


def test_no_noise() -> None:
    y = torch.randn(2, 5)
    assert torch.equal(ops.make_noise("none")(y, generator=_gen(0)), y)
    assert ops.make_noise("none").sigma == 0.0


def test_batch_of_noise_draws_differs_per_sample() -> None:
    # one generator drives the whole batch: samples get different noise (N independent runs)
    y = torch.zeros(3, 1, 8, 8)
    noisy = ops.GaussianNoise(1.0)(y, generator=_gen(0))
    assert not torch.equal(noisy[0], noisy[1]) and not torch.equal(noisy[1], noisy[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_gives_same_noise_on_cuda() -> None:
    y = torch.rand(2, 3, 8, 8) * 2 - 1
    for noise in (ops.GaussianNoise(0.1), ops.PoissonNoise(1.0)):
        on_gpu = noise(y.cuda(), generator=_gen(4))
        assert on_gpu.device.type == "cuda"
        torch.testing.assert_close(on_gpu.cpu(), noise(y, generator=_gen(4)))
