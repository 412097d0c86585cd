"""Pure distillation losses shared by the online-KD methods (docs/reference-spec.md §4).

Every function here is stateless and acts on plain tensors, so the methods stay a few lines long
and each term can be tested against a hand formula. Whether a target receives gradient is the
caller's decision (detach it or not); nothing here detaches silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def kl_div_t(student_logits: torch.Tensor, target_logits: torch.Tensor, T: float) -> torch.Tensor:
    """The reference's KL_T(s || t) = T^2 * KL(softmax(t/T) || softmax(s/T)), batch-mean.

    The T^2 factor keeps the soft-target gradient on the same scale as the CE gradient (Hinton et
    al.). Both sides go through log_softmax (``log_target=True``), which is exact and stays finite
    where a probability underflows; the gradient reaches ``target_logits`` unless the caller
    detaches them.
    """
    log_p_student = F.log_softmax(student_logits.float() / T, dim=1)
    log_p_target = F.log_softmax(target_logits.float() / T, dim=1)
    return F.kl_div(log_p_student, log_p_target, reduction="batchmean", log_target=True) * (T * T)


def rampup_weight(epoch: float, length: float = 80) -> float:
    """Sigmoid-shaped ramp-up exp(-5 (1 - min(e, L)/L)^2) (Laine & Aila), as OKDDip weights its KD.

    ``epoch`` is 0-based, so the first epoch gets exp(-5) ~ 0.0067, never exactly zero. A length of
    0 disables the ramp-up (weight 1 from the start).
    """
    if length <= 0:
        return 1.0
    progress = min(max(epoch, 0.0), length) / length
    return math.exp(-5.0 * (1.0 - progress) ** 2)


def sum_cross_entropy(logits: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Sum over peers of the batch-mean CE: every method trains each peer on the labels."""
    return torch.stack([F.cross_entropy(z, targets) for z in logits]).sum()


def mean_of_others(logits: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """For each peer i, the logit-level mean of all other peers (CL-ILR's soft-target source).

    Computed as (sum - z_i) / (N - 1) so the cost is O(N) rather than O(N^2).
    """
    n = len(logits)
    if n < 2:
        raise ValueError("mean_of_others needs at least two peers")
    total = torch.stack(list(logits)).sum(0)
    return [(total - z) / (n - 1) for z in logits]


def mutual_kl(logits: Sequence[torch.Tensor], T: float) -> torch.Tensor:
    """DML's mutual term: sum_i mean_{j != i} KL_T(z_i || stopgrad(z_j)).

    Every pairwise target is detached, so each peer only learns as a student; averaging over the
    N-1 partners keeps the term's scale independent of N.
    """
    n = len(logits)
    if n < 2:
        raise ValueError("mutual_kl needs at least two peers")
    targets = [z.detach() for z in logits]
    terms = [kl_div_t(logits[i], targets[j], T) for i in range(n) for j in range(n) if j != i]
    return torch.stack(terms).sum() / (n - 1)


def kl_to_targets(students: Sequence[torch.Tensor], targets: Sequence[torch.Tensor], T: float) -> torch.Tensor:
    """sum_i KL_T(z_i || t_i): each peer distils from its own target (CL-ILR, ONE, OKDDip).

    ``targets`` pair up with ``students`` one to one; detach them where the method wants no
    gradient to reach them (CL-ILR, ONE), keep them attached where it does (OKDDip).
    """
    if len(students) != len(targets):
        raise ValueError(f"kl_to_targets got {len(students)} students and {len(targets)} targets")
    return torch.stack([kl_div_t(z, t, T) for z, t in zip(students, targets)]).sum()


def attention_targets(queries: torch.Tensor, keys: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OKDDip's peer targets: x_i = sum_j softmax_j(q_i . k_j) z_j, attention over all peers incl. self.

    ``queries``/``keys`` are [B, P, d'] and ``logits`` [B, P, C]. The scores are not scaled by
    sqrt(d') (as the reference). Returns (attention [B, P, P], targets [B, P, C]); both keep their
    gradient, so the attention is trained through the distillation loss.
    """
    attention = F.softmax(queries @ keys.transpose(1, 2), dim=-1)
    return attention, attention.to(logits.dtype) @ logits
