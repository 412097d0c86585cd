"""OKDPH's parameter hybridisation and fusion (Zhang et al., CVPR 2023) as pure functions; see docs/methods/okdph.md.

The hybrid-weight model (HWM) is a convex combination of the students' parameters; "fusion" pulls
each student part of the way towards it. Both act on lists of tensors (one list per network, in
the same order), so the method decides which tensors take part and these stay testable by hand.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from okd.losses.distill import kl_div_t


def hybrid_tensors(students: Sequence[Sequence[torch.Tensor]], weights: Sequence[float]) -> list[torch.Tensor]:
    """theta_h = sum_i r_i theta_i, tensor by tensor; differentiable in every student tensor.

    Summed in student order (r_0 theta_0 + r_1 theta_1 + ...), as the official code's loop does, so
    the float result is the same to the last bit.
    """
    if len(students) != len(weights) or not students:
        raise ValueError(f"{len(students)} students for {len(weights)} hybrid weights")
    hybrid = [t * weights[0] for t in students[0]]
    for tensors, r in zip(students[1:], weights[1:]):
        hybrid = [t * r + h for t, h in zip(tensors, hybrid)]
    return hybrid


@torch.no_grad()
def fuse_(student: Sequence[torch.Tensor], hybrid: Sequence[torch.Tensor], gamma: float) -> None:
    """In place: theta_i <- gamma theta_h + (1 - gamma) theta_i (gamma = 1 copies the HWM, 0 keeps the student)."""
    if gamma == 0.0:
        return
    for s, h in zip(student, hybrid):
        if gamma == 1.0:
            s.copy_(h)
        else:
            s.copy_(h * gamma + s * (1.0 - gamma))


def okdph_distill(student_logits: Sequence[torch.Tensor], hybrid_logits: torch.Tensor, T: float) -> torch.Tensor:
    """sum_i KL_T(z_i || sg mean(z_1..z_N, z_h)): each student learns from the detached mean of all
    N + 1 networks' logits (the code's ``stable_out`` includes the HWM)."""
    target = torch.stack([*student_logits, hybrid_logits]).mean(0).detach()
    return torch.stack([kl_div_t(z, target, T) for z in student_logits]).sum()
