"""Reference formulas for checking the loss functions: in plain Python floats (independent of torch), and
the same written out in elementary tensor operations (exp, sum, log: no torch.nn.functional) for the
method tests that compare whole loss terms."""

from __future__ import annotations

import math


def softmax(row: list[float], T: float) -> list[float]:
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def kl_t(student: list[list[float]], target: list[list[float]], T: float) -> float:
    """T^2 * mean over rows of sum_k p_t log(p_t / p_s), the batch-mean KL_T(student || target)."""
    rows = []
    for s, t in zip(student, target):
        p_s, p_t = softmax(s, T), softmax(t, T)
        rows.append(sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s)))
    return T * T * sum(rows) / len(rows)


def ce_tensor(z: "torch.Tensor", y: "torch.Tensor") -> "torch.Tensor":
    """Batch-mean cross-entropy from the softmax's definition."""
    import torch

    return -torch.log(torch.exp(z) / torch.exp(z).sum(1, keepdim=True))[torch.arange(len(y)), y].mean()


def softmax_t_tensor(z: "torch.Tensor", T: float) -> "torch.Tensor":
    import torch

    return torch.exp(z / T) / torch.exp(z / T).sum(1, keepdim=True)


def kl_t_tensor(s: "torch.Tensor", t: "torch.Tensor", T: float) -> "torch.Tensor":
    """T^2 * batch mean of sum_k p_t (log p_t - log p_s): ``kl_t`` on tensors."""
    p_t, p_s = softmax_t_tensor(t, T), softmax_t_tensor(s, T)
    return T * T * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
