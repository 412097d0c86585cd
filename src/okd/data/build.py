"""``build_data``: one entry point from a DataConfig to (spec, train loader, eval loader)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from okd.data.augment import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, Normalizer
from okd.data.config import DataConfig, DataSpec, eval_batch_per_rank
from okd.data.fingerprint import tensor_fingerprint
from okd.data.idx import IDX_DATASETS, load_idx
from okd.data.memory import check_fits, synthetic_bytes
from okd.data.loaders import EvalLoader, TensorEvalLoader, TensorTrainLoader, TrainLoader
from okd.data.sampling import SAMPLERS, check_m_per_class, make_plan
from okd.errors import OKDUserError

DATASETS: tuple[str, ...] = ("cifar100", "cifar10", "imagenet", "folder", "digits", "synthetic", *IDX_DATASETS)
# Classes of each fixed dataset (a folder's come from its sub-folders, synthetic's from its option).
NUM_CLASSES: dict[str, int] = {"cifar100": 100, "cifar10": 10, "imagenet": 1000, "digits": 10,
                               **{name: idx.num_classes for name, idx in IDX_DATASETS.items()}}


def known_num_classes(dataset: str, synthetic_classes: int) -> int | None:
    """The class count of ``dataset`` without reading it, or None where only the data can tell (folder)."""
    return synthetic_classes if dataset == "synthetic" else NUM_CLASSES.get(dataset)
DEFAULT_DATA_DIR = "./data"  # the reference scripts' --data default


def build_data(cfg: DataConfig) -> tuple[DataSpec, TrainLoader, EvalLoader]:
    """Loaders for this process's rank; raises OKDUserError for anything the user can fix."""
    device = check_config(cfg)
    name = cfg.dataset.lower()
    if name == "synthetic":
        from okd.data.synthetic import SYNTHETIC_MEAN, SYNTHETIC_STD, make_synthetic

        images = f"--dataset synthetic ({cfg.synthetic_train} + {cfg.synthetic_test} images of {cfg.synthetic_size}px)"
        need = synthetic_bytes(cfg.synthetic_train, cfg.synthetic_test, cfg.synthetic_size)
        check_fits(images, need, torch.device("cpu"), "use fewer --synthetic-train/--synthetic-test or a smaller --synthetic-size")
        check_fits(images, need, device, "use fewer --synthetic-train/--synthetic-test or a smaller --synthetic-size")
        arrays = make_synthetic(cfg.synthetic_train, cfg.synthetic_test, cfg.synthetic_classes, cfg.synthetic_size, cfg.seed)
        crop = 4 if cfg.synthetic_size == 32 else 0
        return in_memory(name, arrays, cfg.synthetic_classes, SYNTHETIC_MEAN, SYNTHETIC_STD, crop, True, cfg, device)
    if name == "digits":
        from okd.data.digits import DIGITS_MEAN, DIGITS_STD, load_digits_uint8

        digits = [str(d) for d in range(10)]
        return in_memory(name, load_digits_uint8(), 10, DIGITS_MEAN, DIGITS_STD, 4, False, cfg, device, digits)
    if name in ("cifar100", "cifar10"):
        from okd.data.cifar import CIFAR10, CIFAR100, load_release

        release, mean, std = (CIFAR100, CIFAR100_MEAN, CIFAR100_STD) if name == "cifar100" else (CIFAR10, CIFAR10_MEAN, CIFAR10_STD)
        arrays, names = load_release(release, cfg.data_dir or DEFAULT_DATA_DIR, download=cfg.download)
        return in_memory(name, arrays, release.num_classes, mean, std, 4, True, cfg, device, names)
    if name in IDX_DATASETS:
        idx = IDX_DATASETS[name]
        arrays = load_idx(idx, cfg.data_dir, download=cfg.download)
        return in_memory(name, arrays, idx.num_classes, (idx.mean,) * 3, (idx.std,) * 3, idx.pad, idx.flip, cfg, device, idx.class_names)
    if name == "imagenet":
        from okd.data.imagenet import build_imagenet

        return build_imagenet(cfg, cfg.data_dir or DEFAULT_DATA_DIR, device)
    if name == "folder":
        from okd.data.folder import build_folder

        return build_folder(cfg, cfg.data_dir or DEFAULT_DATA_DIR, device)
    raise OKDUserError(f"unknown dataset {cfg.dataset!r}; known datasets: {', '.join(DATASETS)}")


def check_config(cfg: DataConfig) -> torch.device:
    """Validate the numbers up front so the user gets one clear line, not a shape error later."""
    try:
        device = torch.device(cfg.device)
    except (RuntimeError, TypeError) as exc:
        raise OKDUserError(f"invalid device {cfg.device!r}: {exc}") from None
    if cfg.world_size < 1 or not 0 <= cfg.rank < cfg.world_size:
        raise OKDUserError(f"rank {cfg.rank} is not in [0, world_size={cfg.world_size})")
    if cfg.batch_size < 1 or cfg.eval_batch_size < 1:
        raise OKDUserError(f"batch sizes must be positive (batch_size={cfg.batch_size}, eval_batch_size={cfg.eval_batch_size})")
    if cfg.batch_size % cfg.world_size:
        raise OKDUserError(f"the global batch size {cfg.batch_size} is not divisible by the {cfg.world_size} processes; pick a multiple of {cfg.world_size}")
    for flag, value in (("--train-per-class", cfg.train_per_class), ("--test-per-class", cfg.test_per_class)):
        if value is not None and cfg.dataset in ("imagenet", "folder"):
            raise OKDUserError(f"{flag} works on the in-memory datasets (digits, cifar10, cifar100, fashion-mnist, mnist, kmnist, synthetic), not --dataset {cfg.dataset}")
    if cfg.sampler not in SAMPLERS:
        raise OKDUserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {cfg.sampler!r}")
    if cfg.sampler == "m_per_class":
        check_m_per_class(cfg.m_per_class, cfg.batch_size, cfg.world_size)
    if cfg.workers < 0:
        raise OKDUserError(f"workers must be >= 0, got {cfg.workers}")
    if cfg.dataset == "synthetic":
        if min(cfg.synthetic_train, cfg.synthetic_test, cfg.synthetic_size) < 1 or cfg.synthetic_classes < 2:
            raise OKDUserError("synthetic data needs train/test/size >= 1 and at least 2 classes")
    return device


def first_per_class(
    images: torch.Tensor, labels: torch.Tensor, per_class: int, num_classes: int, flag: str = "--train-per-class", split: str = "training"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` images of every class, in the split's order.

    A fixed subset (it does not depend on the seed), so runs that differ only in their seed see the
    same few labelled images: the few-label regime where peers overfit and the methods separate.
    """
    labels = labels.to(torch.int64)
    counts = torch.bincount(labels, minlength=num_classes)
    smallest = int(counts.min())
    if per_class < 1 or per_class > smallest:
        raise OKDUserError(
            f"{flag} must be in [1, {smallest}] (the smallest class has {smallest} {split} images), got {per_class}"
        )
    order = torch.argsort(labels, stable=True)  # grouped by class, training order kept inside a class
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.arange(labels.numel()) - starts[labels[order]]
    keep = order[rank_in_class < per_class].sort().values
    return images[keep], labels[keep]


def in_memory(
    name: str,
    arrays: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    num_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    pad: int,
    flip: bool,
    cfg: DataConfig,
    device: torch.device,
    class_names: Sequence[str] | None = None,
) -> tuple[DataSpec, TrainLoader, EvalLoader]:
    """Put uint8 train/test tensors on the device and wrap them in the batched loaders."""
    train_x, train_y, test_x, test_y = arrays
    fingerprint = tensor_fingerprint(arrays, num_classes)
    if cfg.train_per_class is not None:
        train_x, train_y = first_per_class(train_x, train_y, cfg.train_per_class, num_classes)
    if cfg.test_per_class is not None:
        test_x, test_y = first_per_class(test_x, test_y, cfg.test_per_class, num_classes, "--test-per-class", "test")
    names = tuple(class_names) if class_names is not None else None
    spec = DataSpec(
        name, num_classes, train_x.shape[0], test_x.shape[0], int(train_x.shape[-1]), train_y.to(torch.int64).cpu(),
        names, {"class_names": list(names) if names is not None else None}, fingerprint,
    )
    normalizer = Normalizer(mean, std, device)
    plan = make_plan(cfg.sampler, spec.train_targets, cfg.batch_size, cfg.world_size, cfg.rank, cfg.seed, cfg.m_per_class)
    train = TensorTrainLoader(train_x.to(device), train_y.to(device, torch.int64), plan, normalizer, pad, flip, cfg.channels_last)
    evaluate = TensorEvalLoader(
        test_x.to(device), test_y.to(device, torch.int64), eval_batch_per_rank(cfg), normalizer, cfg.rank, cfg.world_size, cfg.channels_last
    )
    return spec, train, evaluate
