"""What the engine asks of the data package, and what it learns back about the dataset."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DataConfig:
    """Everything needed to build the loaders of one process of a (possibly distributed) run.

    Batch sizes are global: a run of W ranks sees the same global batches as a one-process run,
    each rank getting a contiguous 1/W of every batch.
    """

    dataset: str = "digits"  # "cifar100" | "imagenet" | "digits" | "synthetic"
    data_dir: str | None = None  # None: ./data (the reference's default)
    download: bool = False
    batch_size: int = 128  # global; must be divisible by world_size
    eval_batch_size: int = 256  # global; each rank gets ceil(eval_batch_size / world_size)
    device: str = "cpu"  # where batches (and in-memory datasets) live
    seed: int = 0
    workers: int = 8  # ImageNet DataLoader worker processes
    rank: int = 0
    world_size: int = 1
    channels_last: bool = False  # return images in channels_last memory format
    sampler: str = "random"  # "random" (shuffled epochs) | "m_per_class" (MCL's class-balanced batches)
    m_per_class: int = 2  # samples per class in a batch with sampler="m_per_class"
    synthetic_train: int = 512
    synthetic_test: int = 256
    synthetic_classes: int = 10
    synthetic_size: int = 32


@dataclass(frozen=True)
class DataSpec:
    """Facts about the dataset the methods need (class count, size, labels for negatives)."""

    name: str
    num_classes: int
    num_train: int
    num_test: int
    input_size: int
    train_targets: torch.Tensor  # [num_train] int64 on CPU, in training-set order
