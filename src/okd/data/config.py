"""What the engine asks of the data package, and what it learns back about the dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from okd.errors import OKDUserError

IN_MEMORY_MODES = ("auto", "yes", "no")
MIN_IMAGE_SIZE = 8  # pixels: the CIFAR backbones downsample 4x, and the crop pads by size // 8


@dataclass
class DataConfig:
    """Everything needed to build the loaders of one process of a (possibly distributed) run.

    Batch sizes are global: a run of W ranks sees the same global batches as a one-process run,
    each rank getting a contiguous 1/W of every batch.
    """

    dataset: str = "digits"  # "cifar100" | "cifar10" | "imagenet" | "folder" | "digits" | "synthetic"
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
    train_per_class: int | None = None  # keep only the first K training images of each class (few-label regimes)
    test_per_class: int | None = None  # evaluate on the first K test images of each class (a cheaper fixed test subset)
    # --dataset folder (data/folder.py)
    image_size: int | None = None  # side of the square images; None: 32 (the CLI fills in the backbone's)
    val_split: float | None = None  # hold out this fraction of train/ per class instead of reading val/
    in_memory: str = "auto"  # "yes": decode once into one tensor; "no": stream; "auto": by memory_budget
    manifest: dict[str, Any] | None = None  # a run's saved DataSpec.manifest: --resume checks it, eval follows it
    eval_only: bool = False  # okd eval: datasets that can skip their training images do (the train loader is None)


@dataclass(frozen=True)
class DataSpec:
    """Facts about the dataset the methods need (class count, size, labels for negatives)."""

    name: str
    num_classes: int
    num_train: int
    num_test: int
    input_size: int
    train_targets: torch.Tensor  # [num_train] int64 on CPU, in training-set order
    class_names: tuple[str, ...] | None = None  # by label index; None where the data has no names (synthetic)
    manifest: dict[str, Any] | None = None  # plain data a run saves with its checkpoints, for --resume and eval
    fingerprint: dict[str, Any] | None = None  # okd.data.fingerprint: saved with the run, --resume checks it
    notes: tuple[str, ...] = ()  # what the user should know about how the data was read (skipped links)


def check_folder_options(dataset: str, image_size: int | None, val_split: float | None, in_memory: str) -> None:
    """The folder-only options: valid values, and not given to datasets they would silently not affect."""
    given = [name for name, value in (("--image-size", image_size), ("--val-split", val_split)) if value is not None]
    if in_memory != "auto":
        given.append("--in-memory")
    if dataset != "folder" and given:
        raise OKDUserError(f"{', '.join(given)} only apply to --dataset folder (got --dataset {dataset})")
    if in_memory not in IN_MEMORY_MODES:
        raise OKDUserError(f"--in-memory must be auto, yes or no, got {in_memory!r}")
    if image_size is not None and image_size < MIN_IMAGE_SIZE:
        raise OKDUserError(f"--image-size must be at least {MIN_IMAGE_SIZE} pixels, got {image_size}")
    if val_split is not None and not 0 < val_split < 1:
        raise OKDUserError(f"--val-split must be a fraction strictly between 0 and 1 (e.g. 0.1), got {val_split}")


def eval_batch_per_rank(cfg: DataConfig) -> int:
    """Evaluation batches need not split evenly (the order does not matter): round up."""
    return -(-cfg.eval_batch_size // cfg.world_size)
