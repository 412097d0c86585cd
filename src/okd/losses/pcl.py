"""PCL's loss terms (Wu & Gong, AAAI 2021) as pure functions; see docs/methods/pcl.md.

Unlike :mod:`okd.losses.distill`, these functions detach their teachers themselves: in PCL both
teachers (the fused "peer ensemble" logits and the EMA "peer mean" logits) are stop-gradient
targets by definition, so leaving that to each caller would only invite a silent bug.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from okd.losses.distill import kl_div_t, rampup_weight

RAMPUP_MODES = ("intended", "reimpl")


def pcl_rampup(epoch: int, length: float = 80, mode: str = "intended") -> float:
    """Weight of PCL's two distillation terms at 0-based ``epoch``.

    ``intended``: the Mean-Teacher ramp exp(-5 (1 - min(e, L)/L)^2) over ``length`` epochs.
    ``reimpl``: what the public re-implementation computes (``loss_wrapper.py``), which divides
    by its lambda (1.0) instead of the length: exp(-5 (1 - e)^2) for e <= L, then 1. That is
    0.0067, 1, 0.0067 for epochs 0-2 and ~0 up to epoch L, so its KD is off for epochs 2..L;
    kept only to reproduce that code's numbers.
    """
    if mode == "intended":
        return rampup_weight(epoch, length)
    if mode == "reimpl":
        return 1.0 if epoch > length else math.exp(-5.0 * (1.0 - epoch) ** 2)
    raise ValueError(f"PCL ramp-up mode must be one of {RAMPUP_MODES}, got {mode!r}")


def peer_ensemble_kl(students: Sequence[torch.Tensor], fused: torch.Tensor, T: float) -> torch.Tensor:
    """pe = sum_i KL_T(z_i || stopgrad(z_f)): every peer distils from the fused classifier.

    The fused logits are detached, so this term trains the peers only; the fused head learns
    from its own cross-entropy.
    """
    target = fused.detach()
    return torch.stack([kl_div_t(z, target, T) for z in students]).sum()


def peer_mean_kl(students: Sequence[torch.Tensor], ema_logits: Sequence[torch.Tensor], T: float) -> torch.Tensor:
    """pm = sum_i mean_{j != i} KL_T(z_i || stopgrad(ema_j)): each peer distils from the OTHER
    peers' temporal means (its own EMA is excluded, as in the re-implementation's PMLoss).
    """
    n = len(students)
    if n < 2 or len(ema_logits) != n:
        raise ValueError(f"peer_mean_kl needs >= 2 students and one EMA logit per student, got {n} and {len(ema_logits)}")
    targets = [t.detach() for t in ema_logits]
    terms = [kl_div_t(students[i], targets[j], T) for i in range(n) for j in range(n) if j != i]
    return torch.stack(terms).sum() / (n - 1)
