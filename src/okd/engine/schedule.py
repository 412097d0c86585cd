"""Learning rate per epoch, set once at the start of each epoch as the reference does, and an
optional linear warm-up per step on top of it."""

from __future__ import annotations

import math


def learning_rate(epoch: int, base_lr: float, epochs: int, schedule: str = "cosine", milestones: list[int] | None = None, gamma: float = 0.1) -> float:
    """``cosine``: the reference's SGDR with T0 = epochs, i.e. 0.5·lr·(1 + cos(pi·e/epochs)), e 0-based."""
    if schedule == "cosine":
        return 0.5 * base_lr * (1 + math.cos(math.pi * epoch / epochs))
    if schedule == "multistep":
        return base_lr * gamma ** sum(epoch >= m for m in (milestones or []))
    return base_lr


def warmup_factor(epoch: int, step: int, steps_per_epoch: int, warmup_epochs: int) -> float:
    """The share of the scheduled lr during a linear warm-up: (k + 1) / (warmup_epochs x steps_per_epoch)
    at global step k, 1 from then on.

    Why: at a CIFAR-sized lr, the first updates of freshly initialised deep peers on a few hundred images
    blow the logits up, and the distillation terms (which compare those logits) then drive every peer to a
    constant prediction. Rising from ~0 over the first epochs lets BatchNorm statistics and the logits
    settle first (Goyal et al. 2017; timm's ``--warmup-epochs``). ``warmup_epochs=0`` is no warm-up.
    """
    total = warmup_epochs * steps_per_epoch
    done = epoch * steps_per_epoch + step + 1
    return 1.0 if total <= 0 or done >= total else done / total
