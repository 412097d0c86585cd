"""The real 8x8 handwritten digits bundled with scikit-learn, shaped like CIFAR: the offline default.

1,797 images of 10 digits; values 0..16 are scaled to 0..255, upscaled to 32x32 (bilinear) and
replicated to three channels, so every CIFAR backbone runs on them unchanged and a newcomer can
train a cohort in minutes without downloading anything.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from okd.errors import OKDUserError

NUM_TRAIN = 1437
NUM_TEST = 360
SPLIT_SEED = 0  # numpy RandomState(0) permutation: the first 1,437 are train, the rest test
# Per-channel statistics of the 1,437 training images after scaling to [0, 1] (all channels are
# equal); computed once with digits_mean_std() and checked against the data by the tests.
DIGITS_MEAN: tuple[float, float, float] = (0.3054, 0.3054, 0.3054)
DIGITS_STD: tuple[float, float, float] = (0.3234, 0.3234, 0.3234)


@functools.lru_cache(maxsize=1)
def load_digits_uint8() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels): uint8 [n, 3, 32, 32] and int64, CPU."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - scikit-learn is a declared dependency
        raise OKDUserError("the digits dataset needs scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    pixels = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) * (255.0 / 16.0))
    big = F.interpolate(pixels[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    images = big.round().clamp_(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    labels = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    order = torch.from_numpy(np.random.RandomState(SPLIT_SEED).permutation(len(labels)))
    train, test = order[:NUM_TRAIN], order[NUM_TRAIN:]
    return images[train], labels[train], images[test], labels[test]


def digits_mean_std() -> tuple[list[float], list[float]]:
    """Per-channel mean/std of the training images in [0, 1] (how DIGITS_MEAN/STD were made)."""
    train = load_digits_uint8()[0].double() / 255.0
    return train.mean(dim=(0, 2, 3)).tolist(), train.std(dim=(0, 2, 3)).tolist()
