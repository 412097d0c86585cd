"""Class-aware negative sampling for MCL-OKD, vectorised on the training device.

The reference keeps, per class, a Python list of every index of the *other* classes and draws a
full permutation per image in the data workers (about 5 GB of lists on ImageNet, docs/reference-spec.md
§4.7). Here the only dataset-sized state is the training indices sorted by class plus per-class
offsets: the candidates of a sample of class c are the class-sorted order with c's block cut out,
so a uniform draw u in [0, num_train - count[c]) is mapped back by skipping that block. Memory is
O(num_train + B*K) and no per-sample Python loop runs.

Gathers use ``index_select``/``index_copy_``: advanced indexing is many times slower on CPU.

Randomness comes from the global torch RNG of the device (no generator): the engine reseeds it at
every step, which makes a resumed run draw exactly the same negatives.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from okd.errors import OKDUserError

_RANDOM_BITS = 2**62  # integer draws reduced modulo n: bias n / 2**62, i.e. none in practice
DENSE_RATIO = 4  # rows whose range is at most this many times k draw by random keys (O(B*k) memory)


class ClassIndex(NamedTuple):
    """Training set grouped by class: ``order[start[c] : start[c] + count[c]]`` are class c's indices."""

    targets: torch.Tensor  # [num_train] int64 label of every training index
    order: torch.Tensor  # [num_train] int64 training indices sorted by class (stable)
    start: torch.Tensor  # [C] int64 offset of each class's block in ``order``
    count: torch.Tensor  # [C] int64 size of each class's block
    min_candidates: int  # negatives available to the largest class (host int: no sync per step)


def build_class_index(targets: torch.Tensor, num_classes: int | None = None) -> ClassIndex:
    """Group training indices by class (one stable sort; O(num_train) memory)."""
    targets = torch.as_tensor(targets).long().flatten()
    if targets.numel() == 0:
        raise OKDUserError("the training set is empty; MCL-OKD needs labelled training samples")
    if int(targets.min()) < 0:
        raise OKDUserError("training labels must be non-negative class indices")
    classes = max(int(num_classes or 0), int(targets.max()) + 1)
    order = torch.sort(targets, stable=True).indices
    count = torch.bincount(targets, minlength=classes)
    start = torch.cumsum(count, 0) - count
    return ClassIndex(targets, order, start, count, available_negatives(count))


def available_negatives(count: torch.Tensor) -> int:
    """Negatives every sample can draw without replacement: num_train minus the largest class."""
    return int(count.sum() - count.max())


def check_num_negatives(k: int, count: torch.Tensor, option: str = "k") -> None:
    """Refuse a K that some class cannot supply without replacement (a clear, early user error);
    ``option`` is the name of the caller's option that set K (a method's, e.g. its ``nce_k``)."""
    available = available_negatives(count)
    flag = f"--{option.replace('_', '-')}"
    if k < 1:
        raise OKDUserError(f"{option}={k} must be at least 1; use {flag} >= 1")
    if k > available:
        largest = int(count.max())
        raise OKDUserError(
            f"{option}={k} is larger than the {available} negatives available to the largest class "
            f"({largest} of {int(count.sum())} training samples are in it); use {flag} <= {available}"
        )


def _randint_below(high: torch.Tensor, k: int) -> torch.Tensor:
    """[B, k] integers, row b uniform in [0, high[b]) (one draw per entry, exact integers)."""
    raw = torch.randint(0, _RANDOM_BITS, (high.shape[0], k), device=high.device)
    return raw % high[:, None]


def _repeats(sorted_values: torch.Tensor) -> torch.Tensor:
    """Mask of entries equal to their left neighbour in sorted rows (all copies but the first)."""
    repeated = torch.zeros_like(sorted_values, dtype=torch.bool)
    repeated[:, 1:] = sorted_values[:, 1:] == sorted_values[:, :-1]
    return repeated


def _draw_sparse(high: torch.Tensor, k: int) -> torch.Tensor:
    """Distinct draws for rows with k small against high: draw with replacement, redraw repeats.

    Which copy of a repeated value is kept does not matter (the copies are equal), so the process
    is invariant under any relabelling of [0, high) and its result is a uniform k-subset. With
    high >= DENSE_RATIO * k a redraw collides with probability <= 1/DENSE_RATIO, so a few rounds
    suffice; each round re-sorts only the rows that still hold a repeat. Rows come back sorted.
    """
    values = _randint_below(high, k).sort(dim=1).values
    rows = torch.arange(high.shape[0], device=high.device)
    sub = values
    while True:
        repeated = _repeats(sub)
        pending = repeated.any(dim=1)
        if not bool(pending.any()):  # one host sync per round
            return values
        keep = pending.nonzero().squeeze(1)
        rows, sub, repeated = rows.index_select(0, keep), sub.index_select(0, keep), repeated.index_select(0, keep)
        sub = torch.where(repeated, _randint_below(high.index_select(0, rows), k), sub).sort(dim=1).values
        values.index_copy_(0, rows, sub)


def _draw_dense(high: torch.Tensor, k: int) -> torch.Tensor:
    """Distinct draws for rows with k large against high: the k smallest of i.i.d. random keys.

    Costs [B, max(high)] keys, at most DENSE_RATIO * k per row here, so memory stays O(B*k).
    """
    width = int(high.max())
    keys = torch.rand(high.shape[0], width, dtype=torch.float64, device=high.device)
    keys.masked_fill_(torch.arange(width, device=high.device) >= high[:, None], 2.0)
    return keys.topk(k, dim=1, largest=False, sorted=False).indices


def draw_distinct(high: torch.Tensor, k: int, min_high: int | None = None) -> torch.Tensor:
    """[B, k] int64: row b holds k distinct integers drawn uniformly from [0, high[b]).

    Requires ``k <= high[b]`` for every row. Rows with high > DENSE_RATIO * k use the
    redraw-repeats method (O(B*k)); the others use random keys over their whole range, which is
    then itself O(k). ``min_high`` (a known lower bound of ``high``) lets the common all-sparse
    case skip a host sync.
    """
    if high.numel() == 0:
        return torch.empty(0, k, dtype=torch.long, device=high.device)
    if min_high is not None and min_high > DENSE_RATIO * k:
        return _draw_sparse(high, k)
    dense = high <= DENSE_RATIO * k
    if not bool(dense.any()):
        return _draw_sparse(high, k)
    if bool(dense.all()):
        return _draw_dense(high, k)
    out = torch.empty(high.shape[0], k, dtype=torch.long, device=high.device)
    for rows, draw in ((dense.logical_not().nonzero().squeeze(1), _draw_sparse), (dense.nonzero().squeeze(1), _draw_dense)):
        out.index_copy_(0, rows, draw(high.index_select(0, rows), k))
    return out


def sample_negatives(classes: torch.Tensor, index: ClassIndex, k: int) -> torch.Tensor:
    """[B, k] training indices: for each sample, k distinct samples of other classes, uniformly.

    A draw u counts through the class-sorted order with the own class's block removed; adding the
    block size to every u at or past the block start maps it back to a position in ``order``.
    """
    start, count = index.start.index_select(0, classes), index.count.index_select(0, classes)
    high = index.order.numel() - count
    u = draw_distinct(high, k, index.min_candidates)
    position = u + count[:, None] * (u >= start[:, None])
    return index.order.index_select(0, position.flatten()).view_as(position)


def contrast_indices(indices: torch.Tensor, index: ClassIndex, k: int) -> torch.Tensor:
    """[B, k+1] rows to read from a memory bank: the sample itself (column 0), then k negatives.

    The class is looked up from the stored labels, so the own index can never be drawn as a
    negative even if a loader relabelled a sample.
    """
    negatives = sample_negatives(index.targets.index_select(0, indices), index, k)
    return torch.cat([indices[:, None], negatives], dim=1)
