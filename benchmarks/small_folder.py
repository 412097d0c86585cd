"""A small image folder like a practitioner's first data set, made from Fashion-MNIST's IDX files.

Six classes (T-shirt, trouser, dress, sandal, bag, ankle boot), the first TRAIN + VAL images of each
from the IDX training set, written as RGB PNG and JPEG files (alternating) resized to random sizes
between 28 and 119 px: ``OUT/train/<class>/`` and ``OUT/val/<class>/``. The README's "Your own data"
runs use it with 40 + 20 images per class.

    python benchmarks/small_folder.py IDX_DIR OUT [--train 40] [--val 20]
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

NAMES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
CLASSES = (0, 1, 3, 5, 8, 9)


def read_idx(path: Path) -> np.ndarray:
    """An IDX array (optionally gzipped): a zero word, the element type, the rank, then big-endian sizes."""
    raw = gzip.open(path).read() if path.suffix == ".gz" else path.read_bytes()
    rank = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * rank).reshape(shape)


def write(idx_dir: Path, out: Path, train: int, val: int, seed: int = 0) -> None:
    from PIL import Image

    images = read_idx(next(idx_dir.glob("train-images-idx3-ubyte*")))
    labels = read_idx(next(idx_dir.glob("train-labels-idx1-ubyte*")))
    rng = np.random.RandomState(seed)
    for c in CLASSES:
        chosen = np.flatnonzero(labels == c)[: train + val]
        for split, part in (("train", chosen[:train]), ("val", chosen[train:])):
            folder = out / split / NAMES[c]
            folder.mkdir(parents=True, exist_ok=True)
            for i in part:
                w, h = (int(v) for v in rng.randint(28, 120, size=2))
                image = Image.fromarray(images[i]).convert("RGB").resize((w, h), Image.BILINEAR)
                image.save(folder / (f"{i}.png" if i % 2 else f"{i}.jpg"), quality=90)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("idx_dir", type=Path, help="folder with train-images-idx3-ubyte(.gz) and train-labels-idx1-ubyte(.gz)")
    p.add_argument("out", type=Path)
    p.add_argument("--train", type=int, default=40, help="training images per class")
    p.add_argument("--val", type=int, default=20, help="validation images per class")
    args = p.parse_args()
    write(args.idx_dir, args.out, args.train, args.val)
