"""The two loader shapes the engine sees, and their in-memory implementations.

In-memory datasets (CIFAR-100, digits, synthetic) live as one uint8 tensor on the training
device; each step gathers, augments and normalises its batch there (docs/design.md §5), with no
worker processes and no per-image Python work.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch

from okd.data.augment import Normalizer, augment_batch
from okd.data.batch import Batch
from okd.data.sampling import SamplePlan, cpu_generator, even_split


@runtime_checkable
class TrainLoader(Protocol):
    """``len`` = global steps per epoch; ``epoch(e, k)`` yields this rank's batches k.. of epoch e.

    ``set_views(V)`` (before the first epoch): with V > 1 every batch's ``images`` is
    [V, B, C, H, W], V independent augmentations of the same samples, view 0 being the one-view
    batch (methods that give each peer its own view, protocol P1).
    """

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]: ...

    def set_views(self, views: int) -> None: ...


@runtime_checkable
class EvalLoader(Protocol):
    """Iterates this rank's disjoint shard of the test set, un-augmented; ``len`` = its batch count."""

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...


def draw_crop_flip(
    seed: int, epoch: int, step: int, size: int, pad: int, flip: bool, view: int = 0
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Crop offsets [size, 2] and flip bits [size] for a whole global batch (CPU, seeded per step).

    Drawn for the global batch and sliced per rank afterwards, so every world size sees the same
    augmentation; drawn on CPU so every device type sees the same numbers. View 0 keeps the
    stream a one-view run has always used; views 1.. get streams of their own.
    """
    parts = (seed, epoch, step) if view == 0 else (seed, epoch, step, "view", view)
    generator = cpu_generator("okd.augment", *parts)
    offsets = torch.randint(0, 2 * pad + 1, (size, 2), generator=generator) if pad > 0 else None
    flips = torch.randint(0, 2, (size,), generator=generator) if flip else None
    return offsets, flips


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host-to-device copy that does not stall the host (pinned + non_blocking on CUDA)."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def check_views(views: int) -> int:
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ValueError(f"views must be a positive int, got {views!r}")
    return views


class TensorTrainLoader:
    """Shuffled, augmented batches of an on-device uint8 image store, a pure function of (seed, epoch, step)."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        plan: SamplePlan,
        normalizer: Normalizer,
        pad: int = 0,
        flip: bool = False,
        channels_last: bool = False,
    ) -> None:
        self.images = images.contiguous()
        self.targets = targets
        self.plan = plan
        self.normalizer = normalizer
        self.pad, self.flip, self.channels_last = pad, flip, channels_last
        self.device = images.device
        self.views = 1

    def __len__(self) -> int:
        return self.plan.steps

    def set_views(self, views: int) -> None:
        self.views = check_views(views)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """This rank's batches ``start_step..`` of ``epoch``; skipped steps cost nothing."""
        self.plan.check_start(start_step)
        return self._iterate(epoch, start_step)

    def _iterate(self, epoch: int, start_step: int) -> Iterator[Batch]:
        for step, global_batch in enumerate(self.plan.batches(epoch, start_step), start=start_step):
            lo, hi = self.plan.rank_bounds(len(global_batch))
            draws = [draw_crop_flip(self.plan.seed, epoch, step, len(global_batch), self.pad, self.flip, view)
                     for view in range(self.views)]
            # one small host-to-device copy per step: indices and this rank's augmentation draws
            columns = [global_batch[lo:hi, None].repeat(self.views, 1)]
            if self.pad > 0:
                columns.append(torch.cat([offsets[lo:hi] for offsets, _ in draws]))
            if self.flip:
                columns.append(torch.cat([flips[lo:hi, None] for _, flips in draws]))
            packed = to_device(torch.cat(columns, dim=1), self.device)
            indices = packed[:, 0].contiguous()  # contiguous: DDP collectives need it
            column = 1
            dev_offsets = dev_flips = None
            if self.pad > 0:
                dev_offsets, column = packed[:, 1:3], 3
            if self.flip:
                dev_flips = packed[:, column]
            # all views in one gather: [V*B] rows, view-major, so rows [:B] are the one-view batch
            images = augment_batch(self.images, indices, self.normalizer, self.pad, dev_offsets, dev_flips, self.channels_last)
            size = hi - lo
            if self.views > 1:
                images = images.unflatten(0, (self.views, size))
            indices = indices[:size]
            yield Batch(images, self.targets.index_select(0, indices), indices)


class TensorEvalLoader:
    """Contiguous shard ``rank`` of an on-device uint8 test set, normalised, in order."""

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        normalizer: Normalizer,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ) -> None:
        self.images, self.targets = images, targets
        self.batch_size = batch_size
        self.normalizer = normalizer
        self.channels_last = channels_last
        self.start, self.stop = even_split(images.shape[0], world_size, rank)

    def __len__(self) -> int:
        return -(-(self.stop - self.start) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        device = self.images.device
        for lo in range(self.start, self.stop, self.batch_size):
            hi = min(lo + self.batch_size, self.stop)
            images = self.normalizer(self.images[lo:hi], self.channels_last)
            yield Batch(images, self.targets[lo:hi], torch.arange(lo, hi, device=device))
