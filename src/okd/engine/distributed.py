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

from okd.common.collectives import all_gather_rows, is_distributed  # noqa: F401  (part of this module's API)
from okd.errors import OKDUserError


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


def current() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_ranks_true(flag: torch.Tensor) -> bool:
    """Whether ``flag`` holds on every rank: ranks must agree before skipping a step together."""
    value = flag.detach().to(torch.int32).reshape(())
    if is_distributed():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def host_group() -> dist.ProcessGroup | None:
    """A process group for small host-side collectives: the default one under gloo, else a new gloo
    group, so agreeing on a Python flag never waits for (or syncs with) the CUDA stream.

    A collective call: every rank must call it, in the same order.
    """
    if not is_distributed() or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo", timeout=collective_timeout())


def any_rank(flag: bool, group: dist.ProcessGroup | None = None) -> bool:
    """Whether ``flag`` is set on some rank (a MAX all-reduce of one CPU integer; no GPU sync).

    ``group`` must be a gloo group (``host_group()``); a collective call, made by every rank.
    """
    if not is_distributed():
        return flag
    value = torch.tensor(int(flag), dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


def first_flagged_step(step: torch.Tensor) -> int:
    """The smallest non-negative value of a 0-dim ``step`` over ranks (-1 where none is), read once.

    Used for the first step with a non-finite loss: a NaN on one rank's share of the batch must stop
    every rank, or the others would wait in the next collective.
    """
    if not is_distributed():
        return int(step.item())
    never = torch.iinfo(torch.int64).max
    value = torch.where(step >= 0, step.to(torch.int64), never)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    found = int(value.item())
    return -1 if found == never else found


def mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over ranks (logged losses describe the global batch, not rank 0's share)."""
    if not is_distributed():
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


def broadcast_norm_stats(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s BatchNorm running statistics.

    Without --sync-bn each rank's running statistics follow its own share of the batches; DDP runs
    with broadcast_buffers=False (MCL-OKD's banks are too big to broadcast every step), so without
    this each rank would evaluate its shard with different statistics from those rank 0 saves.
    """
    if not is_distributed():
        return
    for sub in module.modules():
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
            for buffer in (sub.running_mean, sub.running_var, sub.num_batches_tracked):
                if buffer is not None:
                    dist.broadcast(buffer, src)


def collective_timeout() -> datetime.timedelta:
    """How long a collective may wait for a silent peer: OKD_DIST_TIMEOUT_S seconds, default 30 minutes.

    Long enough for rank 0 to write a checkpoint while the others wait; tests lower it so a hung
    peer fails fast. (A peer that dies outright is noticed at once: its sockets close.)
    """
    raw = os.environ.get("OKD_DIST_TIMEOUT_S")
    if raw is None or raw.strip() == "":
        return datetime.timedelta(minutes=30)
    try:
        seconds = float(raw)
    except ValueError:
        raise OKDUserError(f"OKD_DIST_TIMEOUT_S must be a number of seconds, got {raw!r}") from None
    if not seconds > 0:
        raise OKDUserError(f"OKD_DIST_TIMEOUT_S must be positive, got {raw!r}")
    return datetime.timedelta(seconds=seconds)


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
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=collective_timeout())
    try:
        yield current()
    except BaseException:
        dist.destroy_process_group()  # no barrier: a failed peer would make it wait for the timeout
        raise
    # every rank done with its last collective before any rank closes its connections
    dist.barrier()
    dist.destroy_process_group()
