"""Shared pieces of the training scripts: seeding, EMA, sigma sampling, timing and logging."""

from __future__ import annotations

import copy
import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "weights"


def setup(seed: int, threads: int) -> torch.Generator:
    """Seed every RNG, limit the CPU threads (the build machine is shared) and return a data generator."""
    torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def batches(n: int, batch_size: int, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless stream of index batches: shuffled epochs drawn from ``gen``, every index once per epoch."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i: i + batch_size]


class EMA:
    """Exponential moving average of a module's parameters, with the usual warm-up of the decay."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.module = copy.deepcopy(module).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.updates += 1
        # (1 + n) / (10 + n) warm-up: early averages are not dominated by the random init.
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for p_ema, p in zip(self.module.parameters(), module.parameters(), strict=True):
            p_ema.lerp_(p.detach(), 1.0 - d)
        for b_ema, b in zip(self.module.buffers(), module.buffers(), strict=True):
            b_ema.copy_(b)


def sample_sigmas(n: int, gen: torch.Generator, p_mean: float, p_std: float, sigma_min: float,
                  sigma_max: float, uniform_frac: float) -> torch.Tensor:
    """Training noise levels: EDM's log-normal ln(sigma) ~ N(p_mean, p_std^2), clipped to
    [sigma_min, sigma_max], mixed with a fraction ``uniform_frac`` drawn uniformly in log-sigma over
    the whole range, so that the extremes the samplers visit (sigma_max = 80 at the first step, 0.002 at
    the last) are trained too."""
    lognormal = (torch.randn(n, generator=gen) * p_std + p_mean).exp()
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    uniform = (torch.rand(n, generator=gen) * (hi - lo) + lo).exp()
    pick = torch.rand(n, generator=gen) < uniform_frac
    return torch.where(pick, uniform, lognormal).clamp(sigma_min, sigma_max)


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up, then a cosine decay to 10% of the base rate at the last step."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


class Logger:
    """Prints and appends JSON lines to a log file (kept outside the repository)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.t0 = time.time()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.time() - self.t0

    def log(self, **fields: Any) -> None:
        fields = {"t": round(self.elapsed(), 1), **fields}
        line = json.dumps(fields)
        print(line, flush=True)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(line + "\n")


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
