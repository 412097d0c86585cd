"""MCL-OKD's pure parts: the NCE loss, batched vs per-pair scoring, memory update, negative sampling."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch.overrides import TorchFunctionMode

from okd.errors import OKDUserError
from okd.losses.contrastive import (
    last_occurrence,
    momentum_update_,
    multiview_nce_loss,
    multiview_nce_loss_pairwise,
    multiview_scores,
    nce_init_value,
    nce_loss,
)
from okd.losses.negatives import build_class_index, check_num_negatives, contrast_indices, draw_distinct


def _plain_nce(p: list[list[float]], num_data: int, eps: float = 1e-7) -> float:
    """The formula of docs/reference-spec.md §4.7, written with loops."""
    batch, m = len(p), len(p[0]) - 1
    noise = m / num_data
    total = 0.0
    for row in p:
        total += math.log(row[0] / (row[0] + noise + eps))
        for value in row[1:]:
            total += math.log(noise / (value + noise + eps))
    return -total / batch


def _unit(*shape: int) -> torch.Tensor:
    x = torch.randn(*shape, dtype=torch.float64)
    return x / x.norm(dim=-1, keepdim=True)


# -- NCE loss -------------------------------------------------------------------------------------


def test_nce_loss_matches_plain_formula() -> None:
    p = [[3e-4, 1e-5, 2e-5, 4e-6], [5e-5, 7e-5, 1e-6, 2e-4], [1e-3, 1e-7, 3e-5, 9e-5]]
    got = nce_loss(torch.tensor(p, dtype=torch.float64), num_data=1000)
    assert got.shape == ()
    assert got.item() == pytest.approx(_plain_nce(p, 1000), rel=1e-12)


def test_nce_loss_batches_over_leading_dims() -> None:
    torch.manual_seed(0)
    probs = torch.rand(3, 2, 5, 9, dtype=torch.float64) * 1e-3
    got = nce_loss(probs, num_data=500)
    assert got.shape == (3, 2)
    for a in range(3):
        for b in range(2):
            assert got[a, b].item() == pytest.approx(_plain_nce(probs[a, b].tolist(), 500), rel=1e-12)


@pytest.mark.parametrize("k, expected", [(256, 6.55), (16384, 10.70)])
def test_initial_value_per_output(k: int, expected: float) -> None:
    assert nce_init_value(k) == pytest.approx(expected, abs=0.01)
    num_data = 50_000
    probs = torch.full((4, k + 1), 1.0 / num_data, dtype=torch.float64)
    assert nce_loss(probs, num_data, eps=0.0).item() == pytest.approx(nce_init_value(k), rel=1e-9)
    assert nce_loss(probs, num_data).item() == pytest.approx(expected, abs=0.01)  # eps adds ~eps * num_data


@pytest.mark.parametrize("num_views", [2, 4])
def test_equal_scores_give_n_n_minus_1_times_the_initial_value(num_views: int) -> None:
    """Equal bank rows and one embedding per view -> equal scores -> P = 1/num_data everywhere."""
    k, num_data, batch, dim = 256, 1000, 6, 16
    banks = _unit(1, 1, dim).expand(num_views, num_data, dim).contiguous()
    embeddings = _unit(num_views, 1, dim).expand(num_views, batch, dim)
    idx = torch.randint(0, num_data, (batch, k + 1))
    loss = multiview_nce_loss(banks, embeddings, idx, temperature=0.1, num_data=num_data)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(num_views * (num_views - 1) * nce_init_value(k), rel=1e-4)
    assert loss.item() / (num_views * (num_views - 1)) == pytest.approx(6.55, abs=0.01)


# -- batched scoring == per-pair reference -------------------------------------------------------


def _loss_and_grad(fn, banks, embeddings, idx, **kw):
    e = embeddings.clone().requires_grad_(True)
    loss = fn(banks, e, idx, **kw)
    (grad,) = torch.autograd.grad(loss, e)
    return loss.detach(), grad


@pytest.mark.parametrize("num_views", [2, 3, 4])
def test_batched_scoring_equals_per_pair_path(num_views: int) -> None:
    torch.manual_seed(1)
    num_data, batch, k, dim = 300, 5, 20, 8
    banks = torch.rand(num_views, num_data, dim) - 0.5
    embeddings = _unit(num_views, batch, dim).float()
    idx = torch.randint(0, num_data, (batch, k + 1))
    kw = {"temperature": 0.1, "num_data": num_data}
    loss_b, grad_b = _loss_and_grad(multiview_nce_loss, banks, embeddings, idx, **kw)
    loss_p, grad_p = _loss_and_grad(multiview_nce_loss_pairwise, banks, embeddings, idx, **kw)
    assert loss_b.item() == pytest.approx(loss_p.item(), rel=1e-5)
    torch.testing.assert_close(grad_b, grad_p, rtol=1e-4, atol=1e-6)
    assert grad_b.abs().sum() > 0


def test_directed_output_layout() -> None:
    """O[i, c] is bank i against view other_views(N, i)[c], at positions contrast_idx."""
    torch.manual_seed(2)
    banks, emb = torch.randn(3, 50, 4), torch.randn(3, 2, 4)
    idx = torch.randint(0, 50, (2, 6))
    scores = multiview_scores(banks, emb, idx, temperature=0.5)
    assert scores.shape == (3, 2, 2, 6)
    expected = torch.exp((banks[2][idx[1, 4]] @ emb[1][1]) / 0.5)  # bank 2 vs view 1 -> column 1
    assert scores[2, 1, 1, 4].item() == pytest.approx(expected.item(), rel=1e-5)


def test_scores_stay_float32_under_autocast() -> None:
    torch.manual_seed(3)
    banks, emb = torch.rand(3, 100, 16) - 0.5, _unit(3, 4, 16).float()
    idx = torch.randint(0, 100, (4, 33))
    plain = multiview_nce_loss(banks, emb, idx, temperature=0.07, num_data=100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert multiview_scores(banks, emb.bfloat16(), idx, 0.07).dtype == torch.float32
        mixed = multiview_nce_loss(banks, emb, idx, temperature=0.07, num_data=100)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(plain.item(), rel=1e-6)


def test_fixed_normaliser_is_used_as_given() -> None:
    torch.manual_seed(4)
    banks, emb = torch.rand(2, 40, 8) - 0.5, _unit(2, 3, 8).float()
    idx = torch.randint(0, 40, (3, 11))
    scores = multiview_scores(banks, emb, idx, 0.1)
    z = torch.tensor([[2.0], [5.0]])
    got = multiview_nce_loss(banks, emb, idx, 0.1, 40, normaliser=z)
    expected = nce_loss(scores[0, 0] / 2.0, 40) + nce_loss(scores[1, 0] / 5.0, 40)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


# -- memory update -------------------------------------------------------------------------------


def test_momentum_update_touches_only_batch_rows_and_normalises() -> None:
    torch.manual_seed(5)
    banks = torch.rand(3, 30, 8) - 0.5
    before = banks.clone()
    idx = torch.tensor([4, 17, 0, 29])
    emb = _unit(3, 4, 8).float()
    momentum_update_(banks, idx, emb, momentum=0.5)
    touched = torch.zeros(30, dtype=torch.bool)
    touched[idx] = True
    assert torch.equal(banks[:, ~touched], before[:, ~touched])
    assert (banks[:, idx] != before[:, idx]).any(-1).all()
    torch.testing.assert_close(banks[:, idx].norm(dim=-1), torch.ones(3, 4))
    mixed = 0.5 * before[:, idx] + 0.5 * emb
    torch.testing.assert_close(banks[:, idx], mixed / mixed.norm(dim=-1, keepdim=True))


def test_repeated_indices_take_the_last_occurrence() -> None:
    idx = torch.tensor([3, 1, 3, 2, 1, 3])
    assert last_occurrence(idx).tolist() == [5, 4, 5, 3, 4, 5]
    banks = torch.zeros(1, 5, 2)
    emb = torch.tensor([[[1.0, 0], [0, 1], [1, 1], [1, 0], [0, 2], [0, 3]]])
    momentum_update_(banks, idx, emb, momentum=0.0)
    torch.testing.assert_close(banks[0, 3], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(banks[0, 1], torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(banks[0, 2], torch.tensor([1.0, 0.0]))


# -- negative sampling ---------------------------------------------------------------------------

LAYOUTS = {
    "balanced": torch.arange(200) % 10,
    "imbalanced": torch.cat([torch.full((120,), 0), torch.full((50,), 1), torch.full((25,), 2), torch.full((5,), 3)]),
    "shuffled_gaps": torch.tensor([7, 2, 2, 9, 7, 7, 0, 2, 9, 9, 9, 0, 7, 2, 2, 0, 9, 7, 2, 2] * 6),
}


def _check_rows(idx: torch.Tensor, indices: torch.Tensor, targets: torch.Tensor, k: int) -> None:
    assert idx.shape == (indices.shape[0], k + 1)
    assert torch.equal(idx[:, 0], indices)
    negatives = idx[:, 1:]
    assert (targets[negatives] != targets[indices][:, None]).all()
    assert (negatives.sort(dim=1).values.diff(dim=1) > 0).all()  # distinct within a row


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_negatives_are_other_classes_distinct_and_positive_first(layout: str) -> None:
    targets = LAYOUTS[layout]
    index = build_class_index(targets)
    torch.manual_seed(6)
    for k in (1, 7, index.min_candidates // 2, index.min_candidates):  # sparse, mixed and dense paths
        for _ in range(20):
            indices = torch.randint(0, targets.numel(), (16,))
            _check_rows(contrast_indices(indices, index, k), indices, targets, k)


def test_k_equal_to_candidates_takes_every_other_class_sample() -> None:
    targets = LAYOUTS["imbalanced"]
    index = build_class_index(targets)
    k = index.min_candidates  # 80: all non-class-0 samples for a class-0 item
    idx = contrast_indices(torch.tensor([0, 5]), index, k)
    assert sorted(idx[0, 1:].tolist()) == list(range(120, 200))


@pytest.mark.parametrize("layout, k", [("balanced", 10), ("balanced", 150), ("imbalanced", 60)])
def test_negatives_cover_candidates_uniformly(layout: str, k: int) -> None:
    targets = LAYOUTS[layout]
    index = build_class_index(targets)
    torch.manual_seed(7)
    sample = int(torch.nonzero(targets == targets[-1])[0])
    draws = 2000
    counts = torch.bincount(contrast_indices(torch.full((draws,), sample), index, k)[:, 1:].flatten(), minlength=targets.numel())
    candidates = targets != targets[sample]
    assert counts[~candidates].sum() == 0
    observed = counts[candidates].double()
    expected = draws * k / int(candidates.sum())
    chi2 = ((observed - expected) ** 2 / expected).sum().item()
    dof = int(candidates.sum()) - 1
    # without replacement the variance is lower than multinomial; 5 sigma above the mean is loose
    assert chi2 < dof + 5 * math.sqrt(2 * dof)


def test_draw_distinct_handles_mixed_rows() -> None:
    torch.manual_seed(8)
    high = torch.tensor([5, 1000, 6, 12, 100_000])
    values = draw_distinct(high, 5)
    assert (values >= 0).all() and (values < high[:, None]).all()
    assert (values.sort(dim=1).values.diff(dim=1) > 0).all()
    assert sorted(values[0].tolist()) == [0, 1, 2, 3, 4]


def test_negatives_follow_the_global_rng() -> None:
    index = build_class_index(LAYOUTS["balanced"])
    indices = torch.arange(8)
    torch.manual_seed(9)
    a = contrast_indices(indices, index, 40)
    torch.manual_seed(9)
    assert torch.equal(a, contrast_indices(indices, index, 40))


def test_too_many_negatives_is_a_user_error() -> None:
    index = build_class_index(LAYOUTS["imbalanced"])
    check_num_negatives(80, index.count, "nce_k")
    with pytest.raises(OKDUserError, match=r"nce_k=81 is larger than the 80 negatives available.*--nce-k <= 80"):
        check_num_negatives(81, index.count, "nce_k")
    with pytest.raises(OKDUserError, match=r"^k=0 must be at least 1; use --k >= 1$"):
        check_num_negatives(0, index.count)


class _LargestTensor(TorchFunctionMode):
    """Records the largest tensor any torch call returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, tuple) else (out,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


def test_sampler_memory_is_independent_of_dataset_size() -> None:
    """ImageNet-sized set: no [B, num_train] tensor, quick, correct."""
    num_train, classes, batch, k = 1_281_167, 1000, 8, 16384
    targets = torch.randint(0, classes, (num_train,))
    index = build_class_index(targets, classes)
    indices = torch.randint(0, num_train, (batch,))
    start = time.perf_counter()
    with _LargestTensor() as mode:
        idx = contrast_indices(indices, index, k)
    assert time.perf_counter() - start < 5.0
    assert mode.largest <= batch * (k + 1)  # O(B*K), far below B * num_train
    _check_rows(idx, indices, targets, k)
