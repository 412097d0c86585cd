"""Which samples go into which batch on which rank: a pure function of (seed, epoch, step).

No global RNG is touched, so a resumed run replays exactly the batches of an uninterrupted one,
and a run of W ranks splits exactly the global batches a single process would see.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


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

    def check_start(self, start_step: int) -> None:
        if not 0 <= start_step <= self.steps:
            raise ValueError(f"start_step {start_step} outside [0, {self.steps}]")
