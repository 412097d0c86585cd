"""One optimisation step and the optimiser, shared by the Trainer and the benchmarks.

Kept apart from the Trainer's loop (checkpoints, logging, signals) so that
``benchmarks/train_throughput.py`` times exactly the code a training run executes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from okd.data.batch import Batch
from okd.errors import OKDUserError
from okd.methods.base import OKDMethod
from okd.models import CohortOutput

SGD_IMPLS = ("auto", "fused", "foreach", "loop")


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast when asked (the Trainer only asks on CUDA), else a no-op."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def sgd_kwargs(impl: str, device: torch.device) -> dict[str, bool]:
    """SGD implementation flags: ``auto`` = fused on CUDA, foreach (multi-tensor) elsewhere.

    ``loop`` is PyTorch's plain per-parameter loop; it exists so tests can check that the faster
    kernels change nothing beyond float rounding.
    """
    if impl not in SGD_IMPLS:
        raise OKDUserError(f"--sgd-impl must be one of {', '.join(SGD_IMPLS)}, got {impl!r}")
    if impl == "auto":
        impl = "fused" if device.type == "cuda" else "foreach"
    if impl == "fused":
        return {"fused": True}
    return {"foreach": impl == "foreach"}


def make_optimizer(
    params: Iterable[nn.Parameter],
    device: torch.device,
    *,
    lr: float,
    momentum: float,
    nesterov: bool,
    weight_decay: float,
    impl: str = "auto",
) -> torch.optim.SGD:
    """The reference's SGD (Nesterov momentum, L2 weight decay) with the fastest kernel for ``device``."""
    return torch.optim.SGD(
        params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, **sgd_kwargs(impl, device)
    )


@dataclass
class StepResult:
    """What one step leaves behind; every tensor stays on the device (no host sync)."""

    output: CohortOutput
    losses: dict[str, torch.Tensor]
    total: torch.Tensor
    finite: torch.Tensor  # 0-dim bool: was the total loss finite
    stepped: bool  # False only when ``skip`` asked to drop the update


def train_step(
    forward: nn.Module,
    method: OKDMethod,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    epoch: int,
    *,
    device: torch.device,
    amp: bool = False,
    seed: int | None = None,
    skip: Callable[[torch.Tensor], bool] | None = None,
    step: int = 0,
) -> StepResult:
    """Forward, losses, backward, optimiser step and the method's post-step update.

    ``forward`` is the (possibly DDP-wrapped / compiled) module that runs ``method``; ``seed``
    reseeds the global RNG first (the Trainer passes a per-(seed, epoch, step, rank) value so a
    resumed run replays the same dropout/sampling draws); ``skip(finite)``, if given, is called
    after backward and a True answer drops the update (``--nan-policy skip-step``, a host sync);
    ``step`` (0-based, within ``epoch``) is passed to the method's ``meta_update``.
    """
    if seed is not None:
        torch.manual_seed(seed)
    with autocast(device, amp):
        output = forward(batch.images)
        losses = method.losses(output, batch, epoch)
    total = sum(losses.values())
    finite = torch.isfinite(total)
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    if skip is not None and skip(finite):
        return StepResult(output, losses, total, finite, stepped=False)
    optimizer.step()
    method.after_step(output, batch)
    method.meta_update(batch, epoch, step, optimizer)
    return StepResult(output, losses, total, finite, stepped=True)
