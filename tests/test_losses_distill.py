"""Distillation losses against hand formulas (docs/reference-spec.md §4: KL_T, OKDDip's ramp-up)."""

from __future__ import annotations

import math

import pytest
import torch

from okd.losses.distill import attention_targets, kl_div_t, kl_to_targets, mean_of_others, mutual_kl, rampup_weight, sum_cross_entropy
from plain_math import kl_t, softmax

STUDENT = [[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]
TARGET = [[3.0, 1.0, 0.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize("T, stored", [(1.0, 0.95242225), (2.0, 1.18927766), (3.0, 1.23480920)])
def test_kl_div_t_matches_hand_formula(T: float, stored: float) -> None:
    value = kl_div_t(torch.tensor(STUDENT), torch.tensor(TARGET), T)
    assert value.shape == ()
    assert value.item() == pytest.approx(kl_t(STUDENT, TARGET, T), rel=1e-5)
    assert value.item() == pytest.approx(stored, rel=1e-5)


def test_kl_div_t_has_t_squared_factor() -> None:
    s, t = torch.tensor(STUDENT), torch.tensor(TARGET)
    T = 4.0
    plain = torch.nn.functional.kl_div(
        torch.log_softmax(s / T, 1), torch.softmax(t / T, 1), reduction="sum"
    ) / s.shape[0]
    assert kl_div_t(s, t, T).item() == pytest.approx(T * T * plain.item(), rel=1e-5)


def test_kl_div_t_is_zero_for_equal_logits_and_positive_otherwise() -> None:
    z = torch.randn(5, 10)
    assert kl_div_t(z, z.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_div_t(z, z + 3.0, 2.0).item() == pytest.approx(0.0, abs=1e-6)  # softmax is shift-invariant
    assert kl_div_t(z, torch.randn(5, 10), 2.0).item() > 0


def test_kl_div_t_gradient_reaches_target_only_when_not_detached() -> None:
    s = torch.tensor(STUDENT, requires_grad=True)
    t = torch.tensor(TARGET, requires_grad=True)
    T = 2.0
    kl_div_t(s, t, T).backward()
    assert t.grad is not None and t.grad.abs().sum() > 0
    # d/ds of T^2 KL(p_t || p_s) = T (p_s - p_t) / B
    expected = T * (torch.softmax(s.detach() / T, 1) - torch.softmax(t.detach() / T, 1)) / 2
    torch.testing.assert_close(s.grad, expected)
    s.grad = None
    t2 = torch.tensor(TARGET, requires_grad=True)
    kl_div_t(s, t2.detach(), T).backward()
    assert t2.grad is None


@pytest.mark.parametrize(
    "epoch, expected", [(0, 0.0067), (10, 0.022), (20, 0.060), (40, 0.287), (60, 0.732), (80, 1.0), (200, 1.0)]
)
def test_rampup_weight_values(epoch: int, expected: float) -> None:
    assert rampup_weight(epoch) == pytest.approx(expected, abs=6e-4)
    assert rampup_weight(epoch) == pytest.approx(math.exp(-5 * (1 - min(epoch, 80) / 80) ** 2))


def test_rampup_weight_length() -> None:
    assert rampup_weight(5, length=10) == pytest.approx(math.exp(-5 * 0.25))
    assert rampup_weight(0, length=0) == 1.0


def test_sum_cross_entropy_and_mean_of_others() -> None:
    a, b, c = torch.tensor(STUDENT), torch.tensor(TARGET), torch.tensor([[0.0, 1.0, 0.0], [2.0, 2.0, 2.0]])
    y = torch.tensor([2, 0])
    hand = sum(-math.log(softmax(row, 1.0)[k]) for z in (STUDENT, TARGET) for row, k in zip(z, [2, 0])) / 2
    assert sum_cross_entropy([a, b], y).item() == pytest.approx(hand, rel=1e-5)
    others = mean_of_others([a, b, c])
    torch.testing.assert_close(others[0], (b + c) / 2)
    torch.testing.assert_close(others[1], (a + c) / 2)
    torch.testing.assert_close(others[2], (a + b) / 2)


def test_mutual_kl_is_mean_over_partners() -> None:
    a, b, c = torch.tensor(STUDENT), torch.tensor(TARGET), torch.tensor([[0.0, 1.0, 0.0], [2.0, 2.0, 2.0]])
    rows = [STUDENT, TARGET, c.tolist()]
    hand = sum(kl_t(rows[i], rows[j], 2.0) for i in range(3) for j in range(3) if i != j) / 2
    assert mutual_kl([a, b, c], 2.0).item() == pytest.approx(hand, rel=1e-5)


def test_kl_to_targets_pairs_each_student_with_its_own_target() -> None:
    students = [torch.tensor(STUDENT, requires_grad=True), torch.tensor(TARGET, requires_grad=True)]
    targets = [torch.tensor(TARGET, requires_grad=True), torch.tensor(STUDENT, requires_grad=True)]
    loss = kl_to_targets(students, targets, 3.0)
    expected = kl_t(STUDENT, TARGET, 3.0) + kl_t(TARGET, STUDENT, 3.0)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in targets)  # nothing detached inside
    with pytest.raises(ValueError, match="2 students and 1 targets"):
        kl_to_targets(students, targets[:1], 3.0)


def test_attention_targets_against_a_plain_loop() -> None:
    torch.manual_seed(0)
    queries = torch.randn(2, 3, 4, requires_grad=True)
    keys = torch.randn(2, 3, 4)
    logits = torch.randn(2, 3, 5)
    attention, targets = attention_targets(queries, keys, logits)
    for b in range(2):
        for i in range(3):
            scores = [float(queries[b, i] @ keys[b, j]) for j in range(3)]  # unscaled q_i . k_j, self included
            weights = [math.exp(s) / sum(math.exp(v) for v in scores) for s in scores]
            assert attention[b, i].tolist() == pytest.approx(weights, rel=1e-5)
            mixed = sum(w * logits[b, j] for j, w in enumerate(weights))
            assert targets[b, i].tolist() == pytest.approx(mixed.tolist(), rel=1e-5, abs=1e-6)
    targets.sum().backward()
    assert queries.grad is not None and queries.grad.abs().sum() > 0  # the attention is trained through x_i
