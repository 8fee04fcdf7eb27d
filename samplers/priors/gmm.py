"""Exact Gaussian-mixture prior: sampling, density, the exact VE denoiser, and the exact posterior.

A mixture ``p0 = sum_k w_k N(mu_k, S_k)`` is the one prior for which everything a diffusion posterior
sampler needs is known in closed form, so it is the ground truth of the solver benchmark
(``bench/gmm.py``, ``docs`` / ``gmm_benchmark.md``):

* the noisy marginal in the variance-exploding (VE/EDM) space ``x = x0 + sigma * eps`` is
  ``p_sigma = sum_k w_k N(mu_k, S_k + sigma^2 I)``;
* the denoiser is ``D(x; sigma) = E[x0 | x] = x + sigma^2 grad log p_sigma(x)
  = sum_k r_k(x) [mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k)]`` with responsibilities
  ``r_k(x) proportional to w_k N(x; mu_k, S_k + sigma^2 I)`` (computed with a softmax, i.e. logsumexp);
* under ``y = A x + sigma_y n`` the posterior is again a mixture (:meth:`GaussianMixture.posterior`).

:class:`GaussianMixture` is an ``nn.Module`` whose ``forward`` is the denoiser, so it plugs into a
k-diffusion / ComfyUI sampler as ``model(x, sigma * s_in, **extra_args)``. Parameters are stored
in float64 and every computation runs in float64 (the result is cast back to the input's dtype);
gradients flow through the casts, so solvers can backpropagate through the denoiser.

:func:`mcgdiff_problem` builds the 25-component benchmark problem of MCGdiff (Cardoso et al.,
ICLR 2024) and :func:`vp_linear_sigmas` the noise grid the benchmark runs on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["GMMProblem", "GaussianMixture", "mcgdiff_problem", "vp_linear_sigmas"]

_F64 = torch.float64


def _as_float_tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{what}: expected a real floating-point tensor, got dtype {value.dtype}")
    if not torch.isfinite(value).all():
        raise ValueError(f"{what}: contains NaN or Inf values")
    return value


def _compute_dtype(device: torch.device) -> torch.dtype:
    # float64 everywhere except on Apple's MPS backend, which has no float64.
    return torch.float32 if device.type == "mps" else _F64


class GaussianMixture(nn.Module):
    """The mixture ``sum_k w_k N(mu_k, S_k)`` in R^d.

    Args:
        means: (K, d) component means.
        weights: (K,) non-negative mixture weights (normalised here; they need not sum to 1).
        covs: None for identity covariances (the benchmark prior; a fast O(K d) denoiser path), or
            (K, d, d) symmetric positive-definite covariances.

    Samples produced by :meth:`sample` have the dtype of ``means``; all other results have the
    dtype of their input ``x``. Inputs ``x`` are (B, d) vectors, or any (B, ...) batch whose trailing
    dimensions hold d numbers (they are flattened and the output keeps x's shape).
    """

    def __init__(self, means: torch.Tensor, weights: torch.Tensor, covs: torch.Tensor | None = None):
        super().__init__()
        means = _as_float_tensor(means, "GaussianMixture means")
        if means.dim() != 2 or min(means.shape) == 0:
            raise ValueError(
                f"GaussianMixture means: expected shape (K, d) with K, d >= 1, got {tuple(means.shape)}")
        k, d = means.shape
        weights = _as_float_tensor(weights, "GaussianMixture weights")
        if weights.shape != (k,):
            raise ValueError(
                f"GaussianMixture weights: expected shape ({k},) to match means, got {tuple(weights.shape)}")
        if (weights < 0).any() or not weights.sum() > 0:
            raise ValueError("GaussianMixture weights: expected non-negative weights with a positive sum")
        self.dtype = means.dtype
        self.num_components, self.dim = int(k), int(d)
        weights = weights.to(_F64)
        weights = weights / weights.sum()
        self.register_buffer("means", means.detach().to(_F64).clone())
        self.register_buffer("weights", weights.detach().clone())
        self.register_buffer("log_weights", weights.detach().log())
        if covs is None:
            self.register_buffer("covs", None)
            self.register_buffer("chol", None)
        else:
            covs = _as_float_tensor(covs, "GaussianMixture covs").detach().to(_F64)
            if covs.shape != (k, d, d):
                raise ValueError(
                    f"GaussianMixture covs: expected shape ({k}, {d}, {d}), got {tuple(covs.shape)}")
            scale = covs.abs().amax().clamp(min=1e-300)
            if ((covs - covs.transpose(-1, -2)).abs().amax() > 1e-8 * scale).item():
                raise ValueError("GaussianMixture covs: the covariance matrices must be symmetric")
            covs = 0.5 * (covs + covs.transpose(-1, -2))
            chol, info = torch.linalg.cholesky_ex(covs)
            if (info != 0).any():
                bad = torch.nonzero(info).flatten().tolist()
                raise ValueError(f"GaussianMixture covs: components {bad} are not positive definite")
            self.register_buffer("covs", covs.clone())
            self.register_buffer("chol", chol)
        self._eig: tuple[torch.Tensor, torch.Tensor] | None = None  # lazy (eigenvalues, eigenvectors)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def identity_covariances(self) -> bool:
        return self.covs is None

    def covariances(self) -> torch.Tensor:
        """The (K, d, d) covariances (an expanded identity view for identity components)."""
        if self.covs is None:
            eye = torch.eye(self.dim, dtype=self.means.dtype, device=self.means.device)
            return eye.expand(self.num_components, self.dim, self.dim)
        return self.covs

    def mean(self) -> torch.Tensor:
        """The mixture mean ``sum_k w_k mu_k`` (d,), float64."""
        return self.weights @ self.means

    def extra_repr(self) -> str:
        cov = "identity" if self.covs is None else "full"
        return f"components={self.num_components}, dim={self.dim}, covariances={cov}"

    def _apply(self, fn, *args, **kwargs):
        self._eig = None  # device/dtype changes invalidate the cached eigendecomposition
        return super()._apply(fn, *args, **kwargs)

    def _params(self, device: torch.device) -> dict[str, torch.Tensor]:
        dt = _compute_dtype(device)
        return {
            "means": self.means.to(device, dt),
            "log_weights": self.log_weights.to(device, dt),
        }

    def _eigh(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._eig is None:
            lam, q = torch.linalg.eigh(self.covs)
            self._eig = (lam, q)
        dt = _compute_dtype(device)
        lam, q = self._eig
        return lam.to(device, dt), q.to(device, dt)

    def _flatten(self, x: torch.Tensor, what: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            got = getattr(x, "dtype", type(x).__name__)
            raise TypeError(f"{what}: expected a real floating-point tensor, got {got}")
        if x.dim() < 2 or x[0].numel() != self.dim:
            raise ValueError(f"{what}: expected a batch (B, {self.dim}) (or (B, ...) with {self.dim} numbers "
                             f"per sample), got shape {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.dim)

    def _sigma_sq(self, sigma: Any, batch: int, device: torch.device, dt: torch.dtype) -> torch.Tensor:
        """Per-sample sigma^2 (B,) from a number, a 0-d tensor, or a (B,) / (1,) tensor."""
        if isinstance(sigma, bool):
            raise TypeError(f"sigma: expected a number or a tensor, got {sigma!r}")
        if isinstance(sigma, (int, float)):
            s = torch.full((batch,), float(sigma), dtype=dt, device=device)
        elif isinstance(sigma, torch.Tensor):
            s = sigma.to(device, dt)
            if s.dim() == 0:
                s = s.expand(batch)
            else:
                s = s.reshape(-1)
                if s.numel() == 1:
                    s = s.expand(batch)
                elif s.numel() != batch:
                    raise ValueError(f"sigma: expected a scalar or one value per sample ({batch}), "
                                     f"got shape {tuple(sigma.shape)}")
        else:
            raise TypeError(f"sigma: expected a number or a tensor, got {type(sigma).__name__}")
        if not (torch.isfinite(s).all() and (s >= 0).all()):
            raise ValueError("sigma: expected finite noise levels >= 0")
        return s * s

    # ------------------------------------------------------------------ densities
    def _component_log_density(self, x: torch.Tensor, s2: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """``log w_k + log N(x; mu_k, S_k + s2 I)`` (B, K) and the pieces the denoiser reuses."""
        p = self._params(x.device)
        mu, logw = p["means"], p["log_weights"]
        d = self.dim
        if self.covs is None:
            c = 1.0 + s2  # (B,) every component has covariance (1 + sigma^2) I
            # ||x - mu_k||^2 expanded: O(B K d) work and no (B, K, d) tensor; accurate enough in float64.
            sq = (x * x).sum(1, keepdim=True) - 2.0 * x @ mu.T + (mu * mu).sum(1)
            logn = -0.5 * sq / c[:, None] - 0.5 * d * torch.log(c)[:, None]
            extra = c
        else:
            lam, q = self._eigh(x.device)
            # coordinates of x - mu_k in the eigenbasis of S_k: z[b, k, e] = q_k[:, e] . (x_b - mu_k)
            z = torch.einsum("bd,kde->bke", x, q) - torch.einsum("kd,kde->ke", mu, q)
            denom = lam + s2[:, None, None]  # (B, K, d) eigenvalues of S_k + sigma^2 I
            logn = -0.5 * (z * z / denom).sum(-1) - 0.5 * torch.log(denom).sum(-1)
            extra = (lam, q, z, denom)
        return logw + logn - 0.5 * d * math.log(2.0 * math.pi), extra

    def log_prob(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """``log p_sigma(x)`` per sample (B,): the mixture density convolved with N(0, sigma^2 I)
        (``sigma = 0``, the default, is the prior itself). Differentiable w.r.t. x."""
        xf = self._flatten(x, "log_prob x")
        dt = _compute_dtype(x.device)
        x64 = xf.to(dt)
        s2 = self._sigma_sq(sigma, xf.shape[0], x.device, dt)
        logits, _ = self._component_log_density(x64, s2)
        return torch.logsumexp(logits, dim=1).to(x.dtype)

    def responsibilities(self, x: torch.Tensor, sigma: float | torch.Tensor = 0.0) -> torch.Tensor:
        """``r_k(x) = P(component k | x_sigma = x)`` (B, K)."""
        xf = self._flatten(x, "responsibilities x")
        dt = _compute_dtype(x.device)
        s2 = self._sigma_sq(sigma, xf.shape[0], x.device, dt)
        logits, _ = self._component_log_density(xf.to(dt), s2)
        return torch.softmax(logits, dim=1).to(x.dtype)

    # ------------------------------------------------------------------ denoiser
    def denoise(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        """The exact VE/EDM denoiser ``D(x; sigma) = E[x0 | x0 + sigma * eps = x]``.

        ``sigma`` is a number or a tensor with one value per sample (k-diffusion passes
        ``sigma * s_in`` of shape (B,)); where sigma == 0 the output is x itself. Output has x's shape
        and dtype and is differentiable w.r.t. x.
        """
        xf = self._flatten(x, "denoise x")
        dt = _compute_dtype(x.device)
        x64 = xf.to(dt)
        s2 = self._sigma_sq(sigma, xf.shape[0], x.device, dt)
        logits, extra = self._component_log_density(x64, s2)
        r = torch.softmax(logits, dim=1)  # (B, K)
        mu = self._params(x.device)["means"]
        if self.covs is None:
            c = extra
            # sum_k r_k [mu_k + (x - mu_k) / c] = x / c + (sigma^2 / c) sum_k r_k mu_k
            out = x64 / c[:, None] + (s2 / c)[:, None] * (r @ mu)
        else:
            lam, q, z, denom = extra
            # m_k = mu_k + S_k (S_k + sigma^2 I)^-1 (x - mu_k), written in S_k's eigenbasis
            shrunk = torch.einsum("bke,kde->bkd", z * (lam / denom), q)
            out = torch.einsum("bk,bkd->bd", r, shrunk) + r @ mu
        out = torch.where((s2 == 0)[:, None], x64, out)
        return out.to(x.dtype).reshape(x.shape)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor, **extra_args: Any) -> torch.Tensor:
        """The denoiser, with the k-diffusion model signature ``model(x, sigma * s_in, **extra_args)``.

        The prior is unconditional, so the sampler's extra arguments (``seed``, ComfyUI's
        ``model_options``, conditioning, ...) are accepted and ignored.
        """
        del extra_args
        return self.denoise(x, sigma)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, generator: torch.Generator | None = None,
               return_components: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``n`` independent draws (n, d) in the dtype of ``means``, on the mixture's device.

        The random numbers come from ``generator`` (its device; CPU by default) so that a seed gives
        the same samples on every device. With ``return_components`` also the component index of each
        draw (n,).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sample n: expected an int >= 1, got {n!r}")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        comps = torch.multinomial(self.weights.to(gen_device), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=_F64, device=gen_device)
        comps = comps.to(self.means.device)
        eps = eps.to(self.means.device)
        if self.chol is None:
            x = self.means[comps] + eps
        else:
            x = self.means[comps] + torch.einsum("nij,nj->ni", self.chol[comps], eps)
        x = x.to(self.dtype)
        return (x, comps) if return_components else x

    # ------------------------------------------------------------------ exact posterior
    def posterior(self, A: torch.Tensor, sigma_y: float | torch.Tensor, y: torch.Tensor) -> GaussianMixture:
        """The exact posterior ``p(x | y)`` under ``y = A x + sigma_y n``, ``n ~ N(0, I)``.

        ``p(x | y) = sum_k w~_k N(mu~_k, S~_k)`` with ``S~_k = (S_k^-1 + A^T A / sigma_y^2)^-1``,
        ``mu~_k = S~_k (A^T y / sigma_y^2 + S_k^-1 mu_k)`` and
        ``w~_k proportional to w_k N(y; A mu_k, A S_k A^T + sigma_y^2 I)`` (normalised in log space).
        A is (m, d), y is (m,) or (1, m), sigma_y > 0. Computed in float64; the result is a float64
        mixture with full covariances.
        """
        A = _as_float_tensor(A, "posterior A")
        if A.dim() != 2 or A.shape[1] != self.dim or A.shape[0] < 1:
            raise ValueError(f"posterior A: expected shape (m, {self.dim}), got {tuple(A.shape)}")
        m = A.shape[0]
        y = _as_float_tensor(y, "posterior y")
        if y.numel() != m or y.dim() > 2 or (y.dim() == 2 and y.shape[0] != 1):
            raise ValueError(f"posterior y: expected shape ({m},) or (1, {m}), got {tuple(y.shape)}")
        if isinstance(sigma_y, torch.Tensor):
            if sigma_y.numel() != 1:
                raise ValueError(f"posterior sigma_y: expected a scalar, got shape {tuple(sigma_y.shape)}")
            sigma_y = float(sigma_y)
        if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float)):
            raise TypeError(f"posterior sigma_y: expected a number, got {sigma_y!r}")
        if not (math.isfinite(sigma_y) and sigma_y > 0):
            raise ValueError(f"posterior sigma_y: expected a finite number > 0, got {sigma_y}")
        dev = self.means.device
        A = A.to(dev, _F64)
        y = y.reshape(m).to(dev, _F64)
        var_y = float(sigma_y) ** 2
        mu, k, d = self.means, self.num_components, self.dim
        eye_m = torch.eye(m, dtype=_F64, device=dev)
        if self.covs is None:
            # identity prior covariances: one shared posterior covariance, S_k^-1 = I
            precision = torch.eye(d, dtype=_F64, device=dev) + A.T @ A / var_y
            prior_term = mu
            G = (A @ A.T + var_y * eye_m).expand(k, m, m)
        else:
            s_inv = torch.cholesky_inverse(self.chol)
            precision = s_inv + A.T @ A / var_y
            prior_term = torch.einsum("kde,ke->kd", s_inv, mu)
            G = A @ self.covs @ A.T + var_y * eye_m
        # posterior covariance via the Cholesky factor of the posterior precision (stays SPD numerically)
        precision = 0.5 * (precision + precision.transpose(-1, -2))
        post_cov = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        post_cov = (0.5 * (post_cov + post_cov.transpose(-1, -2))).expand(k, d, d)
        rhs = (A.T @ y / var_y) + prior_term
        post_mean = torch.einsum("kde,ke->kd", post_cov, rhs)
        # weights: w_k N(y; A mu_k, A S_k A^T + sigma_y^2 I), normalised in log space
        G = 0.5 * (G + G.transpose(-1, -2))
        LG = torch.linalg.cholesky(G)  # (K, m, m)
        resid = (y - mu @ A.T).unsqueeze(-1)  # (K, m, 1)
        white = torch.linalg.solve_triangular(LG, resid, upper=False).squeeze(-1)
        log_marg = (-0.5 * (white * white).sum(-1) - torch.log(torch.diagonal(LG, dim1=-2, dim2=-1)).sum(-1)
                    - 0.5 * m * math.log(2.0 * math.pi))
        post_w = torch.softmax(self.log_weights + log_marg, dim=0)
        return GaussianMixture(post_mean, post_w, post_cov.contiguous())


# ---------------------------------------------------------------------------------------------------------
# The MCGdiff benchmark problem


@dataclass
class GMMProblem:
    """One linear inverse problem with a Gaussian-mixture prior: ``y = A x_true + sigma_y n``."""

    prior: GaussianMixture
    A: torch.Tensor  # (obs, dim), float64
    sigma_y: float
    x_true: torch.Tensor  # (dim,), float64
    y: torch.Tensor  # (obs,), float64

    def posterior(self) -> GaussianMixture:
        """The exact posterior p(x | y) (float64, full covariances)."""
        return self.prior.posterior(self.A, self.sigma_y, self.y)


def _check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what}: expected an int, got {value!r}")
    if value < 1:
        raise ValueError(f"{what}: expected an int >= 1, got {value}")
    return value


def mcgdiff_problem(dim: int, obs: int, seed: int) -> GMMProblem:
    """The 25-component GMM inverse problem of MCGdiff (gmm_benchmark.md §2.1-2.2), fully seeded.

    Prior: means on the 5x5 grid ``(-8i, -8j)`` for i, j in {-2, ..., 2}, tiled along the dimension
    (``(-8i, -8j, -8i, -8j, ...)``, cut to ``dim`` entries), identity covariances, weights
    ``w = n^2 / sum n^2`` with ``n ~ N(0, I_25)``. Measurement: a Gaussian (obs, dim) matrix whose
    singular values are replaced by ``obs`` U(0, 1) values sorted in descending order,
    ``x_true ~ prior``, ``sigma_y = U(0, 1) * max(s)`` and ``y = A x_true + sigma_y n``.

    Every random number comes, in that order, from one ``torch.Generator`` seeded with ``seed``,
    the weights included (MCGdiff drew them before seeding, pitfall P7; here a seed fixes the
    whole problem).
    """
    dim = _check_positive_int(dim, "mcgdiff_problem dim")
    obs = _check_positive_int(obs, "mcgdiff_problem obs")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"mcgdiff_problem seed: expected an int, got {seed!r}")
    if obs > dim:
        raise ValueError(f"mcgdiff_problem obs: expected 1 <= obs <= dim = {dim}, got {obs}")
    g = torch.Generator(device="cpu").manual_seed(seed)
    n = torch.randn(25, generator=g, dtype=_F64)
    weights = n * n / (n * n).sum()
    grid = [(i, j) for i in range(-2, 3) for j in range(-2, 3)]
    pairs = torch.tensor([[-8.0 * i, -8.0 * j] for i, j in grid], dtype=_F64)  # (25, 2)
    means = pairs.repeat(1, (dim + 1) // 2)[:, :dim]
    prior = GaussianMixture(means, weights)

    gauss = torch.randn(obs, dim, generator=g, dtype=_F64)
    u, _, vh = torch.linalg.svd(gauss, full_matrices=True)
    s = torch.rand(obs, generator=g, dtype=_F64).sort(descending=True).values
    A = u @ torch.diag(s) @ vh[:obs]
    x_true = prior.sample(1, generator=g)[0]
    sigma_y = float(torch.rand(1, generator=g, dtype=_F64)) * float(s.max())
    y = A @ x_true + sigma_y * torch.randn(obs, generator=g, dtype=_F64)
    return GMMProblem(prior=prior, A=A, sigma_y=sigma_y, x_true=x_true, y=y)


def vp_linear_sigmas(steps: int, beta_start: float = 1e-4, beta_end: float = 0.02, train_steps: int = 1000,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """VE noise levels of the standard linear DDPM schedule, DDIM-style uniformly respaced.

    ``beta = linspace(beta_start, beta_end, train_steps)`` (increasing: the schedule of DDPM, Stable
    Diffusion, MGPS and DCPS, *not* MCGdiff's decreasing ``linspace(0.02, 1e-4)`` of pitfall P1, so
    numbers are not comparable with MCGdiff/benchopt tables), ``abar = cumprod(1 - beta)``. The
    timesteps are ``steps`` evenly spaced integers from ``train_steps - 1`` down to 0 and the sigmas
    ``sqrt((1 - abar_t) / abar_t)``; a final 0 is appended. Returns a strictly descending (steps + 1,)
    tensor (sigma_max ~ 157 and sigma_min ~ 0.01 with the defaults).
    """
    steps = _check_positive_int(steps, "vp_linear_sigmas steps")
    train_steps = _check_positive_int(train_steps, "vp_linear_sigmas train_steps")
    if steps > train_steps:
        raise ValueError(f"vp_linear_sigmas steps: expected at most train_steps = {train_steps}, got {steps}")
    if not (0 < beta_start <= beta_end < 1):
        raise ValueError(
            f"vp_linear_sigmas: expected 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    betas = torch.linspace(beta_start, beta_end, train_steps, dtype=_F64)
    abar = torch.cumprod(1.0 - betas, dim=0)
    t = torch.linspace(train_steps - 1, 0, steps, dtype=_F64).round().long()
    sigmas = torch.sqrt((1.0 - abar[t]) / abar[t])
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(dtype)
