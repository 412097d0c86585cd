"""Learning rate per epoch, set once at the start of each epoch as the reference does."""

from __future__ import annotations

import math


def learning_rate(epoch: int, base_lr: float, epochs: int, schedule: str = "cosine", milestones: list[int] | None = None, gamma: float = 0.1) -> float:
    """``cosine``: the reference's SGDR with T0 = epochs, i.e. 0.5·lr·(1 + cos(pi·e/epochs)), e 0-based."""
    if schedule == "cosine":
        return 0.5 * base_lr * (1 + math.cos(math.pi * epoch / epochs))
    if schedule == "multistep":
        return base_lr * gamma ** sum(epoch >= m for m in (milestones or []))
    return base_lr
