"""The exact GMM prior: denoiser, density, sampling, posterior, the MCGdiff problem and the sigma grid.

Reference values come from independent computations: torch.distributions for densities (and autograd
for scores), the Kalman (covariance) form for Gaussian posteriors, importance sampling for posterior
means, and explicit loops for the schedule.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from samplers.priors import GaussianMixture, GMMProblem, mcgdiff_problem, vp_linear_sigmas

F64 = torch.float64


def random_spd(k: int, d: int, g: torch.Generator) -> torch.Tensor:
    m = torch.randn(k, d, d, generator=g, dtype=F64)
    return m @ m.transpose(-1, -2) / d + 0.3 * torch.eye(d, dtype=F64)


def make_mixture(full: bool, k: int = 4, d: int = 3, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(k, d, generator=g, dtype=F64)
    weights = torch.rand(k, generator=g, dtype=F64) + 0.1
    covs = random_spd(k, d, g) if full else None
    return GaussianMixture(means, weights, covs)


def reference_distribution(prior: GaussianMixture, sigma: float) -> MixtureSameFamily:
    """p_sigma = sum_k w_k N(mu_k, S_k + sigma^2 I), built with torch.distributions."""
    covs = prior.covariances() + sigma**2 * torch.eye(prior.dim, dtype=F64)
    return MixtureSameFamily(Categorical(probs=prior.weights), MultivariateNormal(prior.means, covs))


@pytest.mark.parametrize("full", [False, True], ids=["identity", "spd"])
@pytest.mark.parametrize("sigma", [0.05, 0.7, 3.0, 25.0])
def test_denoiser_is_tweedie_of_the_autograd_score(full: bool, sigma: float) -> None:
    prior = make_mixture(full)
    g = torch.Generator().manual_seed(1)
    x = prior.sample(16, g) + sigma * torch.randn(16, prior.dim, generator=g, dtype=F64)
    x = x.requires_grad_(True)
    logp = reference_distribution(prior, sigma).log_prob(x)
    (score,) = torch.autograd.grad(logp.sum(), x)
    expected = x.detach() + sigma**2 * score
    got = prior.denoise(x.detach(), sigma)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(prior.log_prob(x.detach(), sigma), logp.detach(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("full", [False, True], ids=["identity", "spd"])
def test_per_sample_sigma_and_sigma_zero(full: bool) -> None:
    prior = make_mixture(full)
    x = prior.sample(4, torch.Generator().manual_seed(2)) + 0.3
    sigma = torch.tensor([0.0, 0.5, 2.0, 0.0], dtype=F64)
    out = prior.denoise(x, sigma)
    for i in range(4):
        torch.testing.assert_close(out[i:i + 1], prior.denoise(x[i:i + 1], float(sigma[i])))
    assert torch.equal(out[0], x[0]) and torch.equal(out[3], x[3])
    assert torch.equal(prior.denoise(x, 0.0), x)


def test_k_diffusion_call_shapes_dtypes_and_gradient() -> None:
    prior = make_mixture(False, d=8)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))  # float32
    s_in = x.new_ones(5)
    out = prior(x, 1.5 * s_in, seed=7, model_options={})  # extra k-diffusion arguments are ignored
    assert out.dtype == torch.float32 and out.shape == (5, 8)
    torch.testing.assert_close(out.double(), prior.denoise(x.double(), 1.5), rtol=1e-6, atol=1e-6)
    # (B, ...) inputs with d numbers per sample keep their shape
    img = x.reshape(5, 1, 2, 4)
    torch.testing.assert_close(prior.denoise(img, 1.5), out.reshape(5, 1, 2, 4))
    # differentiable w.r.t. x (solvers backpropagate through the prior); checked against finite differences
    for p in (prior, make_mixture(True, d=3)):
        x64 = torch.randn(3, p.dim, generator=torch.Generator().manual_seed(4), dtype=F64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda v, p=p: p.denoise(v, torch.tensor([0.3, 1.0, 4.0])), (x64,))


def test_log_prob_matches_torch_distributions() -> None:
    for full in (False, True):
        prior = make_mixture(full)
        x = prior.sample(10, torch.Generator().manual_seed(5))
        torch.testing.assert_close(prior.log_prob(x), reference_distribution(prior, 0.0).log_prob(x))


def test_sampling_moments_and_component_frequencies() -> None:
    prior = make_mixture(True, k=3, d=2, seed=6)
    n = 40_000
    x, comps = prior.sample(n, torch.Generator().manual_seed(7), return_components=True)
    assert x.shape == (n, 2) and x.dtype == F64
    freq = torch.bincount(comps, minlength=3).double() / n
    assert (freq - prior.weights).abs().max() < 4 * math.sqrt(0.25 / n)
    # mixture moments from the definition
    mean = prior.weights @ prior.means
    outer = prior.means[:, :, None] * prior.means[:, None, :]
    second = (prior.weights[:, None, None] * (prior.covs + outer)).sum(0)
    cov = second - torch.outer(mean, mean)
    torch.testing.assert_close(x.mean(0), mean, atol=0.06, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.25, rtol=0.03)
    # the same generator seed gives the same samples
    first = prior.sample(5, torch.Generator().manual_seed(1))
    assert torch.equal(first, prior.sample(5, torch.Generator().manual_seed(1)))


def test_posterior_single_gaussian_matches_kalman_form() -> None:
    g = torch.Generator().manual_seed(8)
    d, m = 4, 2
    mu = torch.randn(1, d, generator=g, dtype=F64)
    S = random_spd(1, d, g)
    A = torch.randn(m, d, generator=g, dtype=F64)
    y = torch.randn(m, generator=g, dtype=F64)
    sigma_y = 0.4
    post = GaussianMixture(mu, torch.ones(1, dtype=F64), S).posterior(A, sigma_y, y)
    # covariance (Kalman) form: gain K = S A^T (A S A^T + sigma_y^2 I)^-1
    S0 = S[0]
    gain = S0 @ A.T @ torch.linalg.inv(A @ S0 @ A.T + sigma_y**2 * torch.eye(m, dtype=F64))
    torch.testing.assert_close(post.means[0], mu[0] + gain @ (y - A @ mu[0]), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(post.covs[0], S0 - gain @ A @ S0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(post.weights, torch.ones(1, dtype=F64))
    # identity-covariance path against the same formula
    post_i = GaussianMixture(mu, torch.ones(1, dtype=F64)).posterior(A, sigma_y, y[None])
    gain_i = A.T @ torch.linalg.inv(A @ A.T + sigma_y**2 * torch.eye(m, dtype=F64))
    torch.testing.assert_close(post_i.means[0], mu[0] + gain_i @ (y - A @ mu[0]), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(post_i.covs[0], torch.eye(d, dtype=F64) - gain_i @ A, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("full", [False, True], ids=["identity", "spd"])
def test_posterior_weights_are_bayes_rule(full: bool) -> None:
    prior = make_mixture(full, k=5, d=4, seed=9)
    g = torch.Generator().manual_seed(10)
    A = torch.randn(2, 4, generator=g, dtype=F64)
    y = A @ prior.sample(1, g)[0] + 0.3 * torch.randn(2, generator=g, dtype=F64)
    post = prior.posterior(A, 0.3, y)
    noise_cov = 0.09 * torch.eye(2, dtype=F64)
    evidence = torch.stack([
        MultivariateNormal(A @ prior.means[k], A @ prior.covariances()[k] @ A.T + noise_cov).log_prob(y)
        for k in range(5)])
    expected = prior.weights * evidence.exp()
    torch.testing.assert_close(post.weights, expected / expected.sum(), rtol=1e-9, atol=1e-12)


def test_posterior_mean_matches_importance_sampling() -> None:
    prior = make_mixture(True, k=3, d=2, seed=11)
    A = torch.tensor([[1.0, -0.5]], dtype=F64)
    sigma_y = 0.8
    y = torch.tensor([1.3], dtype=F64)
    post = prior.posterior(A, sigma_y, y)
    x = prior.sample(200_000, torch.Generator().manual_seed(12))
    logw = -0.5 * ((x @ A.T - y) ** 2).sum(1) / sigma_y**2
    w = torch.softmax(logw, 0)
    ess = 1.0 / (w * w).sum()
    is_mean = w @ x
    spread = torch.sqrt(w @ (x - is_mean) ** 2)
    assert ess > 10_000
    assert ((is_mean - post.mean()).abs() < 5 * spread / ess.sqrt()).all()


def test_bad_inputs_raise_clear_errors() -> None:
    prior = make_mixture(False)
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(3, 2), torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture(torch.zeros(1, 2), torch.ones(1), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="batch"):
        prior.denoise(torch.zeros(2, 5), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        prior.denoise(torch.zeros(2, 3), -1.0)
    with pytest.raises(ValueError, match="sigma"):
        prior.denoise(torch.zeros(2, 3), torch.ones(3))
    with pytest.raises(ValueError, match="sigma_y"):
        prior.posterior(torch.ones(1, 3), 0.0, torch.ones(1))
    with pytest.raises(ValueError, match="posterior A"):
        prior.posterior(torch.ones(1, 2), 0.1, torch.ones(1))


def test_mcgdiff_problem_protocol() -> None:
    p = mcgdiff_problem(8, 4, seed=3)
    assert isinstance(p, GMMProblem)
    assert p.A.shape == (4, 8) and p.x_true.shape == (8,) and p.y.shape == (4,)
    prior = p.prior
    assert prior.num_components == 25 and prior.identity_covariances
    torch.testing.assert_close(prior.weights.sum(), torch.tensor(1.0, dtype=F64))
    expected_means = {(-8.0 * i, -8.0 * j) * 4 for i in range(-2, 3) for j in range(-2, 3)}
    assert {tuple(m.tolist()) for m in prior.means} == expected_means
    s = torch.linalg.svdvals(p.A)
    assert ((s > 0) & (s < 1)).all() and torch.equal(s, s.sort(descending=True).values)
    assert 0 < p.sigma_y < float(s.max())
    # deterministic per seed, different across seeds (weights included)
    q = mcgdiff_problem(8, 4, seed=3)
    for a, b in ((p.A, q.A), (p.y, q.y), (p.x_true, q.x_true), (prior.weights, q.prior.weights)):
        assert torch.equal(a, b)
    r = mcgdiff_problem(8, 4, seed=4)
    assert not torch.equal(prior.weights, r.prior.weights) and not torch.equal(p.A, r.A)
    # odd dimensions tile and cut the pair pattern
    odd = mcgdiff_problem(3, 1, seed=0)
    assert odd.prior.means.shape == (25, 3) and torch.equal(odd.prior.means[:, 2], odd.prior.means[:, 0])
    with pytest.raises(ValueError, match="obs"):
        mcgdiff_problem(4, 5, seed=0)


def test_mcgdiff_prior_is_half_swap_invariant_when_dim_is_a_multiple_of_4() -> None:
    # the property --equireg of bench.gmm relies on: D(T x) = T D(x) for T = swap of the halves
    def swap(v: torch.Tensor) -> torch.Tensor:
        h = v.shape[1] // 2
        return torch.cat([v[:, h:], v[:, :h]], dim=1)

    x = 10.0 * torch.randn(32, 8, generator=torch.Generator().manual_seed(13), dtype=F64)
    prior = mcgdiff_problem(8, 2, seed=0).prior
    torch.testing.assert_close(prior.denoise(swap(x), 0.5), swap(prior.denoise(x, 0.5)))
    x6 = x[:, :6]
    prior6 = mcgdiff_problem(6, 2, seed=0).prior
    assert (prior6.denoise(swap(x6), 0.5) - swap(prior6.denoise(x6, 0.5))).abs().max() > 1e-3


def test_vp_linear_sigmas() -> None:
    sig = vp_linear_sigmas(10)
    assert sig.shape == (11,) and sig.dtype == torch.float32 and sig[-1] == 0
    assert (sig[1:] < sig[:-1]).all()
    # abar_t = prod_{s <= t} (1 - beta_s) with beta linear from 1e-4 to 0.02 over 1000 steps
    abar, abars = 1.0, []
    for t in range(1000):
        abar *= 1.0 - (1e-4 + (0.02 - 1e-4) * t / 999)
        abars.append(abar)
    for i, t in enumerate((999, 888, 777, 666, 555, 444, 333, 222, 111, 0)):
        assert math.isclose(float(sig[i]), math.sqrt((1 - abars[t]) / abars[t]), rel_tol=1e-5)
    assert vp_linear_sigmas(1).shape == (2,)
    assert len(torch.unique(vp_linear_sigmas(1000))) == 1001
    with pytest.raises(ValueError, match="steps"):
        vp_linear_sigmas(1001)
    with pytest.raises(ValueError, match="steps"):
        vp_linear_sigmas(0)
