"""Which samples go into which batch on which rank: a pure function of (seed, epoch, step).

No global RNG is touched, so a resumed run replays exactly the batches of an uninterrupted one,
and a run of W ranks splits exactly the global batches a single process would see.

Two plans share one interface (``steps``, ``seed``, ``batches(epoch, start_step)`` yielding each
global batch's training indices, ``rank_bounds``, ``check_start``): ``EpochPlan`` (``--sampler
random``, one shuffled pass per epoch) and ``MPerClassPlan`` (``--sampler m_per_class``, MCL's
class-balanced batches).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from okd.errors import OKDUserError

SAMPLERS = ("random", "m_per_class")


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints/strings; a hash, so nearby tuples give unrelated streams."""
    blob = b"\x00".join(str(p).encode() for p in parts)
    return int.from_bytes(hashlib.blake2b(blob, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def cpu_generator(*parts: int | str) -> torch.Generator:
    """A CPU generator seeded from ``parts``: CPU streams are identical on every machine and device."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def even_split(total: int, parts: int, index: int) -> tuple[int, int]:
    """Bounds of chunk ``index`` when ``total`` items are cut into ``parts`` contiguous chunks.

    The first ``total % parts`` chunks get one item more, so sizes differ by at most one.
    """
    base, extra = divmod(total, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


@dataclass(frozen=True)
class EpochPlan:
    """Global batches over a shuffled training set, and this rank's share of each.

    Batch ``k`` holds positions ``[k*B, (k+1)*B)`` of the epoch's permutation (no drop_last).
    Exception, to avoid handing a rank an empty batch (DDP would hang or BatchNorm fail): when the
    last global batch would hold fewer samples than there are ranks, it is merged into the batch
    before it. This never happens with one process, nor with CIFAR-100 or ImageNet at usual
    batch sizes; when it does, ``len`` is one less than ``ceil(num_items / batch_size)``.
    """

    num_items: int
    batch_size: int  # global
    world_size: int = 1
    rank: int = 0
    seed: int = 0

    @property
    def steps(self) -> int:
        full = -(-self.num_items // self.batch_size)
        tail = self.num_items - (full - 1) * self.batch_size
        return full - 1 if full > 1 and tail < self.world_size else full

    def bounds(self, step: int) -> tuple[int, int]:
        """Positions ``[start, stop)`` of global batch ``step`` in the epoch's permutation."""
        start = step * self.batch_size
        stop = self.num_items if step == self.steps - 1 else start + self.batch_size
        return start, stop

    def rank_bounds(self, global_size: int) -> tuple[int, int]:
        """This rank's contiguous slice ``[lo, hi)`` of a global batch of ``global_size`` samples."""
        return even_split(global_size, self.world_size, self.rank)

    def permutation(self, epoch: int) -> torch.Tensor:
        """The epoch's sample order (CPU int64), identical on every rank."""
        return torch.randperm(self.num_items, generator=cpu_generator("okd.shuffle", self.seed, epoch))

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[torch.Tensor]:
        """The global batches ``start_step..`` of ``epoch`` (CPU int64 training indices)."""
        order = self.permutation(epoch)
        for step in range(start_step, self.steps):
            start, stop = self.bounds(step)
            yield order[start:stop]

    def check_start(self, start_step: int) -> None:
        check_start(start_step, self.steps)


def check_start(start_step: int, steps: int) -> None:
    if not 0 <= start_step <= steps:
        raise ValueError(f"start_step {start_step} outside [0, {steps}]")


class MPerClassPlan:
    """Batches of ``batch_size / m`` random classes with ``m`` distinct samples each (MCL's sampler).

    As the official ``MPerClassSampler`` (used with ``length_before_new_iter = len(train)``): an
    epoch has ``num_train // batch_size`` batches (at least one); every batch draws its classes
    (without replacement, among the classes present) and each class's samples afresh, so samples
    repeat across the batches of an epoch and some are never seen; a class with fewer than ``m``
    samples is drawn with replacement. A batch lists its classes' samples side by side
    ``[c1, c1, c2, c2, ...]``, and a rank's contiguous slice holds whole classes because the batch
    is a multiple of ``m * world_size``. Each batch is a pure function of (seed, epoch, step).
    """

    def __init__(self, targets: torch.Tensor, m: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0) -> None:
        targets = torch.as_tensor(targets).detach().cpu().long().flatten()
        check_m_per_class(m, batch_size, world_size)
        classes, count = torch.unique(targets, return_counts=True)
        groups = batch_size // m
        if groups > classes.numel():
            raise OKDUserError(
                f"--batch-size {batch_size} with --m-per-class {m} needs {groups} classes per batch, but the training "
                f"set has {classes.numel()}; lower --batch-size or raise --m-per-class"
            )
        self.m, self.batch_size, self.groups = m, batch_size, groups
        self.world_size, self.rank, self.seed = world_size, rank, seed
        self.num_items = targets.numel()
        self.order = torch.sort(targets, stable=True).indices  # training indices grouped by class
        self.count = count
        self.start = torch.cumsum(count, 0) - count
        self.largest = int(count.max())

    @property
    def steps(self) -> int:
        return max(self.num_items // self.batch_size, 1)

    def global_batch(self, epoch: int, step: int) -> torch.Tensor:
        """Training indices [batch_size] of global batch ``step`` of ``epoch`` (CPU int64)."""
        generator = cpu_generator("okd.m_per_class", self.seed, epoch, step)
        chosen = torch.randperm(self.count.numel(), generator=generator)[: self.groups]
        count, start = self.count[chosen, None], self.start[chosen, None]
        # m distinct positions per class: the m smallest of uniform keys over the class's samples
        keys = torch.rand(self.groups, self.largest, generator=generator)
        keys = keys.masked_fill(torch.arange(self.largest) >= count, float("inf"))
        distinct = keys.topk(self.m, dim=1, largest=False).indices
        with_replacement = (torch.rand(self.groups, self.m, generator=generator) * count).long().clamp_max(count - 1)
        positions = torch.where(count >= self.m, distinct, with_replacement)
        return self.order[(start + positions).flatten()]

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[torch.Tensor]:
        for step in range(start_step, self.steps):
            yield self.global_batch(epoch, step)

    def rank_bounds(self, global_size: int) -> tuple[int, int]:
        """A contiguous 1/W of the batch; a multiple of ``m``, so every class's samples stay on one rank."""
        return even_split(global_size, self.world_size, self.rank)

    def check_start(self, start_step: int) -> None:
        check_start(start_step, self.steps)


def check_m_per_class(m: int, batch_size: int, world_size: int = 1) -> None:
    """The batch must split into whole classes, on every rank."""
    if m < 1:
        raise OKDUserError(f"--m-per-class must be >= 1, got {m}")
    if batch_size % (m * world_size):
        what = f"--m-per-class {m}" if world_size == 1 else f"--m-per-class {m} x {world_size} processes = {m * world_size}"
        raise OKDUserError(f"--batch-size {batch_size} is not divisible by {what}; pick a multiple of {m * world_size}")


class SamplePlan(Protocol):
    """What a train loader asks of a plan (EpochPlan or MPerClassPlan)."""

    seed: int

    @property
    def steps(self) -> int: ...

    def batches(self, epoch: int, start_step: int = 0) -> Iterator[torch.Tensor]: ...

    def rank_bounds(self, global_size: int) -> tuple[int, int]: ...

    def check_start(self, start_step: int) -> None: ...


def make_plan(
    sampler: str, targets: torch.Tensor, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0, m_per_class: int = 2
) -> SamplePlan:
    """The sample plan a train loader follows for ``--sampler``."""
    if sampler == "random":
        return EpochPlan(int(torch.as_tensor(targets).numel()), batch_size, world_size, rank, seed)
    if sampler == "m_per_class":
        return MPerClassPlan(targets, m_per_class, batch_size, world_size, rank, seed)
    raise OKDUserError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
