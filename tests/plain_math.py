"""Reference formulas in plain Python floats: independent of torch, for checking the loss functions."""

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
