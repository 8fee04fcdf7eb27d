"""Exact priors for tests and benchmarks (pure PyTorch): the Gaussian mixture with its closed-form
denoiser and exact linear-Gaussian posterior, and the MCGdiff benchmark problem."""

from .gmm import GaussianMixture, GMMProblem, mcgdiff_problem, vp_linear_sigmas

__all__ = ["GMMProblem", "GaussianMixture", "mcgdiff_problem", "vp_linear_sigmas"]
