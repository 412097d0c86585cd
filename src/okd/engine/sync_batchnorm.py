"""Synchronised BatchNorm that also runs on CPU (gloo), and the converter the trainer uses.

``nn.SyncBatchNorm`` only accepts CUDA tensors, so a CPU run under ``torchrun`` (the gloo backend:
tests, small jobs) needs its own. :class:`SyncBatchNorm` normalises with the statistics of the
GLOBAL batch, so W ranks with B/W samples each compute exactly what one process computes on B, in
the forward and the backward pass, and it keeps ``nn.BatchNorm``'s running-statistics rule
(unbiased running variance, momentum, ``num_batches_tracked``).

The statistics travel in one differentiable all-reduce per layer. Each rank contributes its
(count, mean, sum of squared deviations) in its own row of a [world, 2C + 1] tensor and the rows
are combined with Chan et al.'s parallel formula, which, unlike E[x^2] - E[x]^2, does not lose the
variance to cancellation when activations have a large mean. Statistics and normalisation run in
float64, like the double accumulators of PyTorch's CPU BatchNorm, so a distributed step differs
from a single-process one by output rounding only (this path is for CPU runs; CUDA runs use
``nn.SyncBatchNorm``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients too: d(sum_r x_r)/dx_r is the identity."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup | None = None) -> torch.Tensor:
    """Differentiable SUM all-reduce (every rank gets the sum and back-propagates the summed gradient)."""
    return _AllReduceSum.apply(tensor, group)


def global_batch_stats(x: torch.Tensor, group: dist.ProcessGroup | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and biased variance of the batch concatenated over all ranks, and its size.

    ``x`` is [N, C, *]; reductions run over every dimension but 1, in float64.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    channels = x.shape[1]
    dims = [0, *range(2, x.dim())]
    xf = x.double()
    count = x.numel() // max(channels, 1)
    if count > 0:
        mean = xf.mean(dims)
        m2 = (xf - mean.view(1, -1, *([1] * (x.dim() - 2)))).pow(2).sum(dims)
    else:  # an empty local batch still has to take part in the collective
        mean = m2 = xf.new_zeros(channels) + xf.sum() * 0
    row = torch.cat([mean.new_full((1,), float(count)), mean, m2])
    rows = torch.zeros(world, row.numel(), dtype=row.dtype, device=row.device)
    rows = rows.index_copy(0, torch.tensor([rank], device=row.device), row.unsqueeze(0))
    rows = all_reduce_sum(rows, group)
    counts, means, m2s = rows[:, :1].detach(), rows[:, 1 : 1 + channels], rows[:, 1 + channels :]
    total = int(counts.sum().item())
    if total == 0:
        raise ValueError("SyncBatchNorm: every rank's batch is empty")
    global_mean = (counts * means).sum(0) / total
    global_m2 = (m2s + counts * (means - global_mean).pow(2)).sum(0)
    return global_mean, global_m2 / total, total


class SyncBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all ranks, for inputs of any rank >= 2 ([N, C, *]).

    Outside training, or without an initialised process group of more than one rank, it is exactly
    ``nn.BatchNorm``; parameter and buffer names are those of ``nn.BatchNorm``, so its state dict
    loads into a plain backbone and back.
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
        device: Any = None,
        dtype: Any = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input [N, C, *] (got {input.dim()}D input)")

    def _synchronised(self) -> bool:
        if not (dist.is_available() and dist.is_initialized()):
            return False
        return dist.get_world_size(self.process_group) > 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        uses_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        if not (uses_batch_stats and self._synchronised()):
            return super().forward(input)
        self._check_input_dim(input)
        mean, var, total = global_batch_stats(input, self.process_group)
        if total <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got the global batch of {total}")
        if self.training and self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), total)
        shape = (1, -1, *([1] * (input.dim() - 2)))
        scale = torch.rsqrt(var + self.eps)
        out = (input.double() - mean.view(shape)) * scale.view(shape)
        if self.affine:
            out = out * self.weight.double().view(shape) + self.bias.double().view(shape)
        return out.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, total: int) -> None:
        """nn.BatchNorm's rule: momentum (or a cumulative average when None), unbiased running_var."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        if self.running_mean is not None:
            self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        if self.running_var is not None:
            unbiased = var * (total / (total - 1))
            self.running_var.mul_(1 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str | None = None,
                           process_group: dist.ProcessGroup | None = None) -> nn.Module:
    """Every BatchNorm in ``module`` made synchronised: ``nn.SyncBatchNorm`` on CUDA, ours elsewhere.

    Modules are replaced in place (the returned module is ``module`` unless it is itself a
    BatchNorm), reusing the same Parameter and buffer objects, so build the optimiser afterwards
    or before: it sees the same tensors either way.
    """
    if device is not None and torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    return _convert(module, process_group)


def _convert(module: nn.Module, process_group: dist.ProcessGroup | None) -> nn.Module:
    if isinstance(module, _BatchNorm) and not isinstance(module, (SyncBatchNorm, nn.SyncBatchNorm)):
        sync = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats, process_group)
        if module.affine:
            sync.weight, sync.bias = module.weight, module.bias  # the same Parameters
        sync.running_mean, sync.running_var = module.running_mean, module.running_var
        sync.num_batches_tracked = module.num_batches_tracked
        sync.train(module.training)
        if hasattr(module, "qconfig"):
            sync.qconfig = module.qconfig
        return sync
    for name, child in module.named_children():
        converted = _convert(child, process_group)
        if converted is not child:
            module.add_module(name, converted)
    return module
