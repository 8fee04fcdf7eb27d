"""Benchmark command-line tools (``python -m bench.<name>``); they use the pure-PyTorch core only.

* :mod:`bench.gmm`: posterior solvers against the exact posterior of a Gaussian-mixture prior.
"""
