"""Random images and labels for smoke runs and benchmarks: no files, fully determined by the seed."""

from __future__ import annotations

import torch

from okd.data.sampling import cpu_generator

SYNTHETIC_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
SYNTHETIC_STD: tuple[float, float, float] = (0.25, 0.25, 0.25)


def make_synthetic(num_train: int, num_test: int, num_classes: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, test images, test labels): uint8 [n, 3, size, size] / int64, CPU."""
    generator = cpu_generator("okd.synthetic", seed)
    train_x = torch.randint(0, 256, (num_train, 3, size, size), dtype=torch.uint8, generator=generator)
    train_y = torch.randint(0, num_classes, (num_train,), generator=generator)
    test_x = torch.randint(0, 256, (num_test, 3, size, size), dtype=torch.uint8, generator=generator)
    test_y = torch.randint(0, num_classes, (num_test,), generator=generator)
    return train_x, train_y, test_x, test_y
