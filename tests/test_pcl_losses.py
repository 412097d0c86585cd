"""PCL's pure pieces: the ramp-up in both modes, pe/pm against plain-Python formulas and their
gradient flow, and the parameter EMA (docs/methods/pcl.md)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from okd.common.ema import ema_rate, ema_update_
from okd.losses.pcl import pcl_rampup, peer_ensemble_kl, peer_mean_kl
from plain_math import kl_t, softmax

PEERS = [[[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]], [[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]], [[-1.0, 0.5, 0.5], [1.0, 1.0, 3.0]]]
FUSED = [[3.0, 1.0, 0.0], [0.0, 0.0, 1.0]]
EMA = [[[2.0, 0.0, 1.0], [0.0, 1.0, 0.0]], [[0.5, 0.5, 2.0], [1.0, -2.0, 0.0]], [[0.0, 0.0, 0.0], [3.0, 1.0, 1.0]]]


@pytest.mark.parametrize(
    "epoch, intended, reimpl",
    [
        (0, math.exp(-5), math.exp(-5)),
        (1, math.exp(-5 * (79 / 80) ** 2), 1.0),
        (2, math.exp(-5 * (78 / 80) ** 2), math.exp(-5)),
        (3, math.exp(-5 * (77 / 80) ** 2), math.exp(-20)),
        (40, math.exp(-1.25), 0.0),
        (80, 1.0, 0.0),
        (81, 1.0, 1.0),
        (299, 1.0, 1.0),
    ],
)
def test_rampup_table_in_both_modes(epoch: int, intended: float, reimpl: float) -> None:
    assert pcl_rampup(epoch, 80, "intended") == pytest.approx(intended, rel=1e-12, abs=0)
    assert pcl_rampup(epoch, 80, "reimpl") == pytest.approx(reimpl, rel=1e-12, abs=1e-300)


def test_rampup_values_quoted_in_the_docs() -> None:
    assert round(pcl_rampup(0, 80, "intended"), 4) == 0.0067
    assert round(pcl_rampup(40, 80, "intended"), 4) == 0.2865
    assert pcl_rampup(5, 80, "reimpl") < 1e-30  # the re-implementation's KD is off here


def test_rampup_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="intended"):
        pcl_rampup(0, 80, "sigmoid")


def test_peer_ensemble_kl_matches_hand_formula_and_spares_the_fused_logits() -> None:
    T = 3.0
    students = [torch.tensor(p, requires_grad=True) for p in PEERS]
    fused = torch.tensor(FUSED, requires_grad=True)
    value = peer_ensemble_kl(students, fused, T)
    expected = sum(kl_t(p, FUSED, T) for p in PEERS)
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert fused.grad is None
    for s, p in zip(students, PEERS):
        # d/dz_i of T^2 KL(p_f || p_i) = T (p_i - p_f) / B, with B = 2 rows
        hand = [[T * (a - b) / 2 for a, b in zip(softmax(row, T), softmax(f, T))] for row, f in zip(p, FUSED)]
        torch.testing.assert_close(s.grad, torch.tensor(hand), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [2, 3])
def test_peer_mean_kl_averages_over_the_other_peers_ema(n: int) -> None:
    T = 3.0
    students = [torch.tensor(p, requires_grad=True) for p in PEERS[:n]]
    ema = [torch.tensor(e, requires_grad=True) for e in EMA[:n]]
    value = peer_mean_kl(students, ema, T)
    expected = sum(
        sum(kl_t(PEERS[i], EMA[j], T) for j in range(n) if j != i) / (n - 1) for i in range(n)
    )
    assert value.item() == pytest.approx(expected, rel=1e-5)
    value.backward()
    assert all(e.grad is None for e in ema)
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in students)


def test_peer_mean_kl_ignores_each_peers_own_ema() -> None:
    """Moving EMA 0 changes only the terms of peers 1 and 2, by exactly their hand-computed change."""
    T = 3.0
    moved_ema0 = [[5.0, -5.0, 1.0], [0.0, 4.0, 0.0]]
    students = [torch.tensor(p) for p in PEERS]
    base = peer_mean_kl(students, [torch.tensor(e) for e in EMA], T)
    moved = peer_mean_kl(students, [torch.tensor(moved_ema0), torch.tensor(EMA[1]), torch.tensor(EMA[2])], T)
    change = sum(kl_t(PEERS[i], moved_ema0, T) - kl_t(PEERS[i], EMA[0], T) for i in (1, 2)) / 2
    assert (moved - base).item() == pytest.approx(change, rel=1e-4)


def test_peer_mean_kl_rejects_mismatched_lists() -> None:
    with pytest.raises(ValueError, match="one EMA logit per student"):
        peer_mean_kl([torch.zeros(2, 3)] * 3, [torch.zeros(2, 3)] * 2, 3.0)


# ---------------------------------------------------------------------------------------------
# EMA


@pytest.mark.parametrize("step, decay, rate", [(0, 0.999, 0.0), (1, 0.999, 0.5), (3, 0.999, 0.75), (999, 0.999, 0.999), (5000, 0.999, 0.999), (10, 0.5, 0.5), (7, 0.0, 0.0)])
def test_ema_rate_follows_the_formula(step: int, decay: float, rate: float) -> None:
    assert ema_rate(step, decay) == pytest.approx(min(1 - 1 / (step + 1), decay), abs=0)
    assert ema_rate(step, decay) == pytest.approx(rate, abs=1e-15)


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_ema_rate_rejects_decay_outside_unit_interval(decay: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        ema_rate(0, decay)


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_ema_update_copies_the_student_at_step_0_and_leaves_buffers_alone() -> None:
    torch.manual_seed(0)
    student, shadow = _net(), _net()
    student[1].running_mean.fill_(7.0)
    before_buffers = {k: v.clone() for k, v in shadow.named_buffers()}
    ema_update_(list(shadow.parameters()), list(student.parameters()), step=0, decay=0.999)
    for s, p in zip(shadow.parameters(), student.parameters()):
        assert torch.equal(s, p)
    for k, v in shadow.named_buffers():
        assert torch.equal(v, before_buffers[k])


def test_ema_update_blends_with_the_rate_of_each_step() -> None:
    torch.manual_seed(0)
    student, shadow = _net(), _net()
    ema_update_(list(shadow.parameters()), list(student.parameters()), step=0, decay=0.9)
    expected = [p.detach().clone() for p in shadow.parameters()]
    for step in range(1, 15):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
        a = min(1 - 1 / (step + 1), 0.9)
        expected = [a * e + (1 - a) * p.detach() for e, p in zip(expected, student.parameters())]
        assert ema_update_(list(shadow.parameters()), list(student.parameters()), step=step, decay=0.9) == a
    for s, e in zip(shadow.parameters(), expected):
        torch.testing.assert_close(s.detach(), e, rtol=1e-6, atol=1e-6)


def test_ema_update_rejects_mismatched_lists() -> None:
    with pytest.raises(ValueError, match="shadow has 1 tensors"):
        ema_update_([torch.zeros(2)], [torch.zeros(2), torch.zeros(3)], step=0, decay=0.9)
