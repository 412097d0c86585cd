"""KDCL's soft-target rules against hand-computed values and independent plain formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from okd.losses.ensemble_targets import (
    ENSEMBLE_RULES,
    linear_target,
    linear_weights,
    mean_target,
    minlogit_target,
    naive_target,
)


def ce_of(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-sample cross-entropy written out: log(sum exp z) - z_y."""
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def test_minlogit_hand_example() -> None:
    # 2 peers x 3 classes, one sample of class 1
    logits = torch.tensor([[[2.0, 1.0, 0.0]], [[0.0, 3.0, 1.0]]])
    target = minlogit_target(logits, torch.tensor([1]))
    # peer 0 shifted by its true logit 1: [1, 0, -1]; peer 1 shifted by 3: [-3, 0, -2]
    assert target.tolist() == [[-3.0, 0.0, -2.0]]


def test_minlogit_properties_on_random_logits() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, 5, generator=generator) * 3
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    target = minlogit_target(logits, labels)
    rows = torch.arange(6)
    assert torch.equal(target[rows, labels], torch.zeros(6))  # the true class sits exactly at 0
    for peer in range(3):
        shifted = logits[peer] - logits[peer, rows, labels].unsqueeze(1)
        assert bool((target <= shifted).all())
    # the best achievable margins: no peer has a lower cross-entropy than the target, per sample
    assert bool((ce_of(target, labels) <= ce_of(logits, labels.expand(3, -1)).min(0).values + 1e-6).all())


def test_naive_picks_the_lowest_ce_peer_per_sample() -> None:
    logits = torch.tensor([
        [[3.0, 0.0], [0.0, 1.0]],  # peer 0: sure of class 0 on both samples
        [[0.5, 0.0], [0.0, 4.0]],  # peer 1: hesitant on sample 0, sure of class 1 on sample 1
    ])
    labels = torch.tensor([0, 1])
    target = naive_target(logits, labels)
    assert torch.equal(target, torch.tensor([[3.0, 0.0], [0.0, 4.0]]))  # peer 0 for sample 0, peer 1 for sample 1
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 7, 3, generator=generator)
    labels = torch.randint(0, 3, (7,), generator=generator)
    target = naive_target(logits, labels)
    for b in range(7):
        losses = [math.log(sum(math.exp(v) for v in logits[i, b].tolist())) - float(logits[i, b, labels[b]]) for i in range(4)]
        assert torch.equal(target[b], logits[losses.index(min(losses)), b])


def test_linear_weights_reach_the_best_convex_combination() -> None:
    generator = torch.Generator().manual_seed(2)
    labels = torch.randint(0, 5, (16,), generator=generator)
    logits = torch.randn(2, 16, 5, generator=generator) * 2
    logits[1] += 2 * F.one_hot(labels, 5)  # peer 1 is the better one

    def batch_ce(w: torch.Tensor) -> float:
        return float(ce_of(torch.einsum("n,nbc->bc", w, logits), labels).mean())

    weights = linear_weights(logits, labels)
    assert weights.shape == (2,) and bool((weights >= 0).all()) and float(weights.sum()) == pytest.approx(1.0)
    grid = min(batch_ce(torch.tensor([1 - a, a])) for a in torch.linspace(0, 1, 1001).tolist())
    assert batch_ce(weights) <= grid + 1e-4
    assert torch.allclose(linear_target(logits, labels), torch.einsum("n,nbc->bc", weights, logits))
    three = torch.randn(3, 16, 5, generator=generator) * 2
    candidates = torch.distributions.Dirichlet(torch.ones(3)).sample((3000,))
    best = min(float(ce_of(torch.einsum("n,nbc->bc", w, three), labels).mean()) for w in candidates)
    fitted = float(ce_of(linear_target(three, labels), labels).mean())
    assert fitted <= best + 1e-4


def test_mean_and_the_rule_table() -> None:
    logits = torch.arange(12.0).view(2, 2, 3)
    assert torch.equal(mean_target(logits), (logits[0] + logits[1]) / 2)
    assert list(ENSEMBLE_RULES) == ["minlogit", "naive", "linear", "mean"]
    labels = torch.tensor([2, 0])
    for rule in ENSEMBLE_RULES.values():
        assert rule(logits, labels).shape == (2, 3)
