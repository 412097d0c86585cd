"""SwitOKD's switching rule and distillation term (Qian et al., ECCV 2022); see docs/methods/switokd.md.

The rule compares the distillation gap G = mean_b ||p_s - p_t||_1 with a threshold. The adaptive
threshold is delta = ||p_s - y||_1 - exp(-||p_t - y||_1 / (||p_s - y||_1 + ||p_t - y||_1)) ||p_t - y||_1,
each norm batch-averaged. Everything here is computed from detached logits: the switch decides
which network updates, it is not trained.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from okd.losses.distill import kl_div_t

THRESHOLD_RANGE = (0.0, 2.0)  # an L1 distance between two probability vectors lies in [0, 2]


def switch_sums(teacher_logits: torch.Tensor, student_logits: torch.Tensor, targets: torch.Tensor,
                tau: float = 1.0) -> torch.Tensor:
    """[sum_b ||p_s - p_t||_1, sum_b ||p_s - y||_1, sum_b ||p_t - y||_1, B] of one batch (p = softmax(z / tau)).

    Sums, not means, so ranks can add theirs before :func:`expert_mode` divides by the global count.
    As in the official code the gap uses ``tau`` and the label distances use tau = 1.
    """
    t, s = teacher_logits.detach().float(), student_logits.detach().float()
    y = F.one_hot(targets, s.shape[1]).to(s.dtype)
    gap = (F.softmax(s / tau, 1) - F.softmax(t / tau, 1)).abs().sum(1).sum()
    s_err = (F.softmax(s, 1) - y).abs().sum(1).sum()
    t_err = (F.softmax(t, 1) - y).abs().sum(1).sum()
    return torch.stack([gap, s_err, t_err, torch.tensor(float(len(targets)), device=s.device)])


def adaptive_threshold(s_err: float, t_err: float) -> float:
    """delta = s_err - exp(-t_err / (s_err + t_err)) t_err."""
    return s_err - math.exp(-t_err / (s_err + t_err)) * t_err


def expert_mode(sums: torch.Tensor, threshold: float | None = None) -> bool:
    """True = "expert mode": pause the teacher, train only the student.

    The code's rule: G > delta and ||p_t - y||_1 < ||p_s - y||_1 (the teacher is the better one
    and too far ahead). ``threshold`` None = the adaptive delta; a number = a fixed delta.
    """
    gap, s_err, t_err, count = (float(v) for v in sums.tolist())
    gap, s_err, t_err = gap / count, s_err / count, t_err / count
    delta = adaptive_threshold(s_err, t_err) if threshold is None else threshold
    return gap > delta and t_err < s_err


def switokd_kl(target_logits: torch.Tensor, logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """mean_b sum_k p_k (log p_k - log q_k), p = softmax(target / tau), q = softmax(logits / tau).

    The code's ``kl_div``: no tau^2 factor (its published runs use tau = 1, where the two agree).
    The gradient reaches ``target_logits`` unless the caller detaches them.
    """
    return kl_div_t(logits, target_logits, tau) / (tau * tau)
