"""Exponential moving average of parameters (Mean Teacher; PCL's "peer mean teacher").

Only parameters are averaged. Buffers (BatchNorm running statistics) are left to the shadow's
own train-mode forward passes, as the PCL re-implementation and CuriousAI's Mean Teacher do.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def ema_rate(step: int, decay: float) -> float:
    """a_t = min(1 - 1/(t+1), decay): the true running mean while it is the larger smoothing,
    so step 0 copies the student and early steps are not dominated by the initial weights."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
    if step < 0:
        raise ValueError(f"EMA step must be >= 0, got {step}")
    return min(1.0 - 1.0 / (step + 1), decay)


@torch.no_grad()
def ema_update_(shadow: Sequence[torch.Tensor], params: Sequence[torch.Tensor], step: int, decay: float) -> float:
    """In place: shadow <- a_t * shadow + (1 - a_t) * params, for 0-based global ``step``; returns a_t.

    Written as one multi-tensor lerp (one kernel per dtype/device group on GPU instead of one
    per parameter); lerp with weight 1 returns ``params`` exactly, so step 0 is an exact copy.
    """
    if len(shadow) != len(params):
        raise ValueError(f"EMA shadow has {len(shadow)} tensors but the model has {len(params)}")
    rate = ema_rate(step, decay)
    if shadow:
        torch._foreach_lerp_(list(shadow), [p.detach() for p in params], 1.0 - rate)
    return rate
