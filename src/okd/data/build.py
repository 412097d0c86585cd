"""``build_data``: one entry point from a DataConfig to (spec, train loader, eval loader)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from okd.data.augment import CIFAR100_MEAN, CIFAR100_STD, Normalizer
from okd.data.config import DataConfig, DataSpec
from okd.data.loaders import EvalLoader, TensorEvalLoader, TensorTrainLoader, TrainLoader
from okd.data.sampling import SAMPLERS, check_m_per_class, make_plan
from okd.errors import OKDUserError

DATASETS: tuple[str, ...] = ("cifar100", "imagenet", "digits", "synthetic")
DEFAULT_DATA_DIR = "./data"  # the reference scripts' --data default


def build_data(cfg: DataConfig) -> tuple[DataSpec, TrainLoader, EvalLoader]:
    """Loaders for this process's rank; raises OKDUserError for anything the user can fix."""
    device = check_config(cfg)
    name = cfg.dataset.lower()
    if name == "synthetic":
        from okd.data.synthetic import SYNTHETIC_MEAN, SYNTHETIC_STD, make_synthetic

        arrays = make_synthetic(cfg.synthetic_train, cfg.synthetic_test, cfg.synthetic_classes, cfg.synthetic_size, cfg.seed)
        crop = 4 if cfg.synthetic_size == 32 else 0
        return in_memory(name, arrays, cfg.synthetic_classes, SYNTHETIC_MEAN, SYNTHETIC_STD, crop, True, cfg, device)
    if name == "digits":
        from okd.data.digits import DIGITS_MEAN, DIGITS_STD, load_digits_uint8

        return in_memory(name, load_digits_uint8(), 10, DIGITS_MEAN, DIGITS_STD, 4, False, cfg, device)
    if name == "cifar100":
        from okd.data.cifar import load_cifar100

        arrays = load_cifar100(cfg.data_dir or DEFAULT_DATA_DIR, download=cfg.download)
        return in_memory(name, arrays, 100, CIFAR100_MEAN, CIFAR100_STD, 4, True, cfg, device)
    if name == "imagenet":
        from okd.data.imagenet import build_imagenet

        return build_imagenet(cfg, cfg.data_dir or DEFAULT_DATA_DIR, device)
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


def eval_batch_per_rank(cfg: DataConfig) -> int:
    """Evaluation batches need not split evenly (the order does not matter): round up."""
    return -(-cfg.eval_batch_size // cfg.world_size)


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
) -> tuple[DataSpec, TrainLoader, EvalLoader]:
    """Put uint8 train/test tensors on the device and wrap them in the batched loaders."""
    train_x, train_y, test_x, test_y = arrays
    spec = DataSpec(name, num_classes, train_x.shape[0], test_x.shape[0], int(train_x.shape[-1]), train_y.to(torch.int64).cpu())
    normalizer = Normalizer(mean, std, device)
    plan = make_plan(cfg.sampler, spec.train_targets, cfg.batch_size, cfg.world_size, cfg.rank, cfg.seed, cfg.m_per_class)
    train = TensorTrainLoader(train_x.to(device), train_y.to(device, torch.int64), plan, normalizer, pad, flip, cfg.channels_last)
    evaluate = TensorEvalLoader(
        test_x.to(device), test_y.to(device, torch.int64), eval_batch_per_rank(cfg), normalizer, cfg.rank, cfg.world_size, cfg.channels_last
    )
    return spec, train, evaluate
