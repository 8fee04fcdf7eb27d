"""Fashion-MNIST from the Debian package, padded to 32x32 and scaled to [-1, 1].

Install the data once with ``apt-get install -y dataset-fashion-mnist`` (MIT/Expat, Zalando); the
files land in ``/usr/share/datasets/fashion-mnist`` (override with ``FASHION_MNIST_DIR``).

``python -m train.fashion_data`` writes ``data/fashion_test64.safetensors``: 64 images drawn with a
fixed seed from the TEST split (never used for training), with their labels and test-split indices.
``python -m train.fashion_data --split validation`` writes ``data/fashion_val32.safetensors``: 32
images drawn from the last 1,000 TRAIN images, which every training script holds out
(:data:`VALIDATION`); the EquiReg analysis (``bench.equireg_analysis``) chooses and sweeps on these,
never on the test images. Tests and benchmarks use only these files; the training scripts read the
TRAIN split through :func:`load_split`.
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

__all__ = ["CLASSES", "DEFAULT_DIR", "load_split", "pad_and_scale", "read_idx"]

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
REPO = Path(__file__).resolve().parents[1]
TEST_SUBSET = REPO / "data" / "fashion_test64.safetensors"
VALIDATION_SUBSET = REPO / "data" / "fashion_val32.safetensors"
#: the last VALIDATION images of the TRAIN split are held out by every training script
VALIDATION = 1000
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes into an array of its stored shape."""
    with gzip.open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4]!r})")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def pad_and_scale(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) in [0, 255] -> float32 (N, 1, 32, 32) in [-1, 1], padded with the background -1."""
    x = torch.from_numpy(np.array(images, dtype=np.float32))  # a copy: the IDX buffer is read-only
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"images must have shape (N, 28, 28), got {tuple(x.shape)}")
    x = x / 127.5 - 1.0
    return torch.nn.functional.pad(x[:, None], (2, 2, 2, 2), value=-1.0)


def load_split(split: str, root: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (images (N, 1, 32, 32) float32 in [-1, 1], labels (N,) int64) of 'train' or 'test'."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    root = root or os.environ.get("FASHION_MNIST_DIR", DEFAULT_DIR)
    img_file, lab_file = (Path(root) / f for f in _FILES[split])
    if not img_file.exists():
        raise FileNotFoundError(
            f"{img_file} not found: install the data with `apt-get install -y dataset-fashion-mnist` "
            "or set FASHION_MNIST_DIR to a folder holding the Fashion-MNIST .gz files"
        )
    images = pad_and_scale(read_idx(img_file))
    labels = torch.from_numpy(read_idx(lab_file).astype(np.int64))
    return images, labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="test: from the TEST split (default); validation: from the held-out last "
                             f"{VALIDATION} TRAIN images")
    parser.add_argument("--n", type=int, default=None,
                        help="number of images (default 64 test, 32 validation)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.split == "test":
        images, labels = load_split("test")
        offset, n, out = 0, args.n or 64, args.out or TEST_SUBSET
        source = "Fashion-MNIST test split (t10k), Debian dataset-fashion-mnist, MIT"
    else:
        images, labels = load_split("train")
        offset = images.shape[0] - VALIDATION
        images, labels = images[offset:], labels[offset:]
        n, out = args.n or 32, args.out or VALIDATION_SUBSET
        source = (f"Fashion-MNIST train split, held-out last {VALIDATION} images (indices {offset}..), "
                  "Debian dataset-fashion-mnist, MIT")
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randperm(images.shape[0], generator=gen)[:n].sort().values
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {"images": images[idx].contiguous(), "labels": labels[idx].contiguous(),
         "indices": (idx + offset).contiguous()},
        str(out),
        metadata={"source": source, "seed": str(args.seed), "range": "[-1, 1]",
                  "padding": "28x28 padded to 32x32 with -1"},
    )
    counts = torch.bincount(labels[idx], minlength=10).tolist()
    print(f"wrote {out} ({n} {args.split} images, class counts {counts})")


if __name__ == "__main__":
    main()
