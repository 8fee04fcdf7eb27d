"""EDM denoiser training shared by ``train.pixel_prior`` and ``train.latent_prior``.

Loss (Karras et al. 2022): for data x0, noise n ~ N(0, I) and a noise level sigma,
``lambda(sigma) * ||D(x0 + sigma n, sigma) - x0||^2`` with ``lambda = 1 / c_out(sigma)^2``, i.e. unit-weight
MSE on the network's own target. sigma is drawn as in :func:`train.common.sample_sigmas`: EDM's
log-normal (P_mean = -1.2, P_std = 1.2) mixed with 20% log-uniform over [0.002, 80], the range the
solvers use. sigma_data is measured on the training data. Weights are the EMA of the parameters.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from samplers.models.fashion import save_edm_denoiser
from samplers.models.small_unet import EDMDenoiser, SmallUNet, edm_loss_weight

from .common import EMA, Logger, batches, count_params, lr_at, sample_sigmas, setup

EVAL_SIGMAS = (0.02, 0.1, 0.3, 1.0, 3.0, 10.0)


def add_arguments(p: argparse.ArgumentParser, *, steps: int, batch: int, lr: float, ema: float,
                  max_minutes: float, out: Path) -> None:
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=ema)
    p.add_argument("--p-mean", type=float, default=-1.2)
    p.add_argument("--p-std", type=float, default=1.2)
    p.add_argument("--uniform-frac", type=float, default=0.2)
    p.add_argument("--sigma-min", type=float, default=0.002)
    p.add_argument("--sigma-max", type=float, default=80.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=max_minutes,
                   help="stop early (the steps done are recorded) past this wall time")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps, keeping the --steps learning-rate schedule (to "
                        "reproduce a run that the wall-time limit cut short)")
    p.add_argument("--log", type=Path, default=None)
    p.add_argument("--out", type=Path, default=out)


@torch.no_grad()
def denoising_mse(model: EDMDenoiser, data: torch.Tensor, sigmas: Sequence[float],
                  seed: int) -> dict[str, float]:
    """Mean squared error of D(x0 + sigma n, sigma) against x0 at fixed sigmas (fixed noise seed)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for s in sigmas:
        noise = torch.randn(data.shape, generator=gen)
        den = torch.cat([model(x, s) for x in (data + s * noise).split(250)])
        out[f"{s:g}"] = float((den - data).pow(2).mean())
    return out


def train_edm(name: str, data: torch.Tensor, val: torch.Tensor, unet_config: Mapping[str, Any],
              args: argparse.Namespace, extra_meta: Mapping[str, Any] | None = None,
              gen: torch.Generator | None = None) -> dict[str, Any]:
    """Train an EDMDenoiser on ``data`` (N, C, H, W); save the EMA weights to ``args.out``."""
    gen = gen if gen is not None else setup(args.seed, args.threads)
    sigma_data = round(float(data.std()), 4)
    model = EDMDenoiser(SmallUNet(**unet_config), sigma_data, args.sigma_min, args.sigma_max)
    ema = EMA(model, args.ema)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    log = Logger(args.log)
    log.log(event="start", name=name, params=count_params(model), sigma_data=sigma_data,
            data_shape=list(data.shape), **{k: str(v) for k, v in vars(args).items()})

    losses: list[float] = []
    step = 0
    for step, idx in enumerate(batches(data.shape[0], args.batch, gen)):
        if (step >= args.steps or log.elapsed() > 60 * args.max_minutes
                or (args.stop_after is not None and step >= args.stop_after)):
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup, args.steps)
        x0 = data[idx]
        sigma = sample_sigmas(x0.shape[0], gen, args.p_mean, args.p_std, args.sigma_min, args.sigma_max,
                              args.uniform_frac)
        noise = torch.randn(x0.shape, generator=gen)
        den = model(x0 + sigma[:, None, None, None] * noise, sigma)
        per_sample = (den - x0).pow(2).flatten(1).mean(1)
        loss = (edm_loss_weight(sigma, sigma_data) * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"training diverged at step {step} (loss {losses[-1]})")
        if step % 100 == 0:
            window = losses[-100:]
            log.log(step=step, loss=sum(window) / len(window), lr=opt.param_groups[0]["lr"])
    steps_done = step if step < args.steps else args.steps
    wall = log.elapsed()

    final: EDMDenoiser = ema.module
    val_mse = denoising_mse(final, val, EVAL_SIGMAS, seed=args.seed + 1)
    last = losses[-200:]
    record = {
        "command": " ".join([f"python -m train.{name}", *sys.argv[1:]]),
        "seed": args.seed, "steps": steps_done, "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
        "ema": args.ema, "p_mean": args.p_mean, "p_std": args.p_std, "uniform_frac": args.uniform_frac,
        "sigma_min": args.sigma_min, "sigma_max": args.sigma_max, "threads": args.threads,
        "sigma_data": sigma_data, "wall_time_s": round(wall, 1),
        "final_train_loss": sum(last) / len(last), "val_denoise_mse": val_mse,
        "params": count_params(final), "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
    }
    save_edm_denoiser(final, args.out, training=record, extra=extra_meta)
    log.log(event="done", **record)
    return record
