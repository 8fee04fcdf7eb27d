"""Train the small KL autoencoder (32x32x1 -> 8x8x4) on the Fashion-MNIST TRAIN split.

``python -m train.autoencoder`` (needs ``apt-get install -y dataset-fashion-mnist``) writes
``weights/fashion_autoencoder.safetensors``. Loss per batch: mean squared reconstruction error of a
posterior sample z ~ q(z|x) plus ``kl_weight`` times the mean (per latent element) KL(q(z|x) || N(0, I)).
After training, the latent scale factor 1 / std(E[z|x]) is measured on 10,000 training images and
stored with the weights, so that ``encode`` gives latents of about unit standard deviation. The last
1,000 training images are held out for validation; the committed 64 TEST images are only reported.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from samplers.models.autoencoder import KLAutoencoder
from samplers.models.fashion import AUTOENCODER_FILE, load_test_images, save_autoencoder

from .common import EMA, Logger, batches, count_params, lr_at, setup
from .fashion_data import load_split

VALIDATION = 1000


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB for images in [-1, 1] (peak-to-peak 2)."""
    mse = (a.clamp(-1, 1) - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(4.0 / mse.clamp_min(1e-12))


def kl_per_element(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


@torch.no_grad()
def evaluate(model: KLAutoencoder, images: torch.Tensor, chunk: int = 250) -> float:
    out = [psnr(model.decode_unscaled(model.posterior(x)[0]), x) for x in images.split(chunk)]
    return float(torch.cat(out).mean())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--kl-weight", type=float, default=1e-5)
    p.add_argument("--ema", type=float, default=0.995)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-minutes", type=float, default=25.0,
                   help="stop early (the steps done are recorded) past this wall time")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps, keeping the --steps learning-rate schedule (to "
                        "reproduce a run that the wall-time limit cut short)")
    p.add_argument("--log", type=Path, default=None)
    p.add_argument("--out", type=Path, default=AUTOENCODER_FILE)
    args = p.parse_args(argv)

    gen = setup(args.seed, args.threads)
    images, _ = load_split("train")
    train, val = images[:-VALIDATION], images[-VALIDATION:]
    model = KLAutoencoder()
    ema = EMA(model, args.ema)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    log = Logger(args.log)
    log.log(event="start", params=count_params(model), **{k: str(v) for k, v in vars(args).items()})

    running, step = [], 0
    for step, idx in enumerate(batches(train.shape[0], args.batch, gen)):
        if (step >= args.steps or log.elapsed() > 60 * args.max_minutes
                or (args.stop_after is not None and step >= args.stop_after)):
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.lr, args.warmup, args.steps)
        x = train[idx]
        mean, logvar = model.posterior(x)
        z = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=gen)
        rec = (model.decode_unscaled(z) - x).pow(2).mean()
        kl = kl_per_element(mean, logvar).mean()
        loss = rec + args.kl_weight * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        running.append((rec.item(), kl.item()))
        if step % 100 == 0 or step == args.steps - 1:
            r = running[-100:]
            log.log(step=step, rec=sum(a for a, _ in r) / len(r), kl=sum(b for _, b in r) / len(r),
                    lr=opt.param_groups[0]["lr"])
    steps_done = step if step < args.steps else args.steps
    wall = log.elapsed()

    final = ema.module
    with torch.no_grad():
        means = torch.cat([final.posterior(x)[0] for x in train[:10000].split(500)])
    scale = 1.0 / float(means.std())
    final.scale_factor.fill_(scale)
    val_psnr = evaluate(final, val)
    test_psnr = evaluate(final, load_test_images()[0])
    last = running[-200:]
    record = {
        "command": " ".join(["python -m train.autoencoder", *(sys.argv[1:] if argv is None else argv)]),
        "seed": args.seed, "steps": steps_done, "batch": args.batch, "lr": args.lr,
        "kl_weight": args.kl_weight,
        "ema": args.ema, "threads": args.threads, "wall_time_s": round(wall, 1),
        "final_train_rec_mse": sum(a for a, _ in last) / len(last),
        "final_train_kl": sum(b for _, b in last) / len(last),
        "val_psnr_db": round(val_psnr, 3), "test64_psnr_db": round(test_psnr, 3),
        "latent_mean": float(means.mean()), "latent_std_unscaled": float(means.std()),
        "params": count_params(final), "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
    }
    if not math.isfinite(record["final_train_rec_mse"]):
        raise RuntimeError("training diverged (non-finite loss)")
    save_autoencoder(final, args.out, training=record)
    log.log(event="done", **record)


if __name__ == "__main__":
    main()
