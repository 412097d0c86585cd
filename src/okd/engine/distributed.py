"""torch.distributed helpers: process-group setup from torchrun's environment and exact gathers.

A single process without torchrun sees world size 1 and every helper degrades to a no-op, so the
same code path serves one CPU, one GPU and many nodes.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order; sizes may differ across ranks.

    Used for MCL-OKD's memory-bank update: every rank writes every rank's embeddings, so the banks
    stay identical everywhere.
    """
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    counts = [int(s.item()) for s in sizes]
    longest = max(counts)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:c] for g, c in zip(gathered, counts)])


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def process_group(device: str) -> Iterator[DistInfo]:
    """Join torchrun's process group (nccl on CUDA, gloo on CPU) for the duration of a job.

    Without torchrun's environment this does nothing: a single process runs unchanged.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1 or is_distributed():
        yield current()
        return
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    try:
        yield current()
    finally:
        dist.destroy_process_group()
