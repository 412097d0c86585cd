"""The m-per-class sampler (MCL's): batch invariants, determinism per (seed, epoch, step), rank
slices that keep each class's samples together, the loaders following it, and clear errors."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from okd.data import DataConfig, build_data
from okd.data.sampling import EpochPlan, MPerClassPlan, make_plan
from okd.errors import OKDUserError

# 7 classes of unequal size: class 6 has a single sample, class 5 two, the others 3..7
TARGETS = torch.tensor([c for c, n in enumerate([7, 6, 5, 4, 3, 2, 1]) for _ in range(n)])[torch.randperm(28, generator=torch.Generator().manual_seed(0))]


def check_batch(batch: torch.Tensor, m: int, groups: int) -> None:
    """``groups`` distinct classes, each exactly m times in a contiguous run, distinct samples where the class allows."""
    labels = TARGETS[batch]
    assert batch.shape == (m * groups,)
    runs = labels.view(groups, m)
    assert (runs == runs[:, :1]).all(), labels  # [c1 x m, c2 x m, ...]
    assert len(set(runs[:, 0].tolist())) == groups
    sizes = Counter(TARGETS.tolist())
    for run, label in zip(batch.view(groups, m), runs[:, 0].tolist()):
        if sizes[label] >= m:
            assert len(set(run.tolist())) == m, (label, run)


@pytest.mark.parametrize("m, batch_size", [(2, 8), (3, 12), (1, 5), (2, 14)])
def test_every_batch_holds_batch_over_m_classes_times_m_samples(m: int, batch_size: int) -> None:
    plan = MPerClassPlan(TARGETS, m, batch_size, seed=1)
    assert plan.steps == 28 // batch_size  # the official sampler's len(train) // batch_size
    for epoch in (0, 1):
        for batch in plan.batches(epoch):
            check_batch(batch, m, batch_size // m)


def test_classes_smaller_than_m_are_drawn_with_replacement() -> None:
    plan = MPerClassPlan(TARGETS, 2, 14, seed=0)  # all 7 classes in every batch, class 6 has one sample
    (only,) = (TARGETS == 6).nonzero().flatten().tolist()
    for step in range(10):
        batch = plan.global_batch(0, step)
        assert (batch == only).sum() == 2


def test_deterministic_pure_function_of_seed_epoch_step() -> None:
    a, b = MPerClassPlan(TARGETS, 2, 8, seed=3), MPerClassPlan(TARGETS, 2, 8, seed=3)
    full = list(a.batches(2))
    assert all(torch.equal(x, y) for x, y in zip(full, b.batches(2)))
    resumed = list(b.batches(2, start_step=2))  # a resumed epoch replays the same tail
    assert all(torch.equal(x, y) for x, y in zip(full[2:], resumed)) and len(resumed) == len(full) - 2
    assert torch.equal(a.global_batch(2, 1), full[1])
    others = [MPerClassPlan(TARGETS, 2, 8, seed=4).global_batch(2, 0), a.global_batch(3, 0), a.global_batch(2, 1)]
    assert all(not torch.equal(full[0], o) for o in others)


def test_draws_cover_every_class_and_sample_over_many_batches() -> None:
    """Fresh draws per batch: over many batches every class and every sample shows up, with repeats."""
    plan = MPerClassPlan(TARGETS, 2, 6, seed=0)
    seen = torch.cat([plan.global_batch(e, s) for e in range(20) for s in range(plan.steps)])
    assert set(seen.tolist()) == set(range(28))
    repeats = [len(torch.cat(list(plan.batches(e))).unique()) < 24 for e in range(20)]
    assert any(repeats)  # 4 steps x 6 samples per epoch, drawn with replacement across batches


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_slices_are_disjoint_whole_classes_and_rebuild_the_global_batch(world_size: int) -> None:
    m, batch_size = 2, 8
    plans = [MPerClassPlan(TARGETS, m, batch_size, world_size, rank, seed=5) for rank in range(world_size)]
    single = MPerClassPlan(TARGETS, m, batch_size, seed=5)
    for step, global_batch in enumerate(single.batches(1)):
        slices = []
        for plan in plans:
            rank_global = plan.global_batch(1, step)
            assert torch.equal(rank_global, global_batch)  # every rank draws the same global batch
            lo, hi = plan.rank_bounds(len(rank_global))
            slices.append((lo, hi))
            labels = TARGETS[rank_global[lo:hi]]
            assert all(count == m for count in Counter(labels.tolist()).values())  # no class split across ranks
        assert slices == [(r * batch_size // world_size, (r + 1) * batch_size // world_size) for r in range(world_size)]


def test_loaders_follow_the_sampler_on_every_rank() -> None:
    base = dict(dataset="synthetic", synthetic_train=64, synthetic_test=8, synthetic_classes=6, synthetic_size=8,
                batch_size=8, sampler="m_per_class", m_per_class=2, seed=2)
    spec, train, _ = build_data(DataConfig(**base))
    batches = list(train.epoch(0))
    assert len(train) == len(batches) == 8
    for batch in batches:
        labels = batch.targets.view(4, 2)
        assert (labels[:, 0] == labels[:, 1]).all() and len(set(labels[:, 0].tolist())) == 4
        assert torch.equal(batch.targets, spec.train_targets[batch.indices])
    ranks = [list(build_data(DataConfig(**base, world_size=2, rank=r))[1].epoch(0)) for r in range(2)]
    for step, whole in enumerate(batches):
        assert torch.equal(torch.cat([r[step].indices for r in ranks]), whole.indices)
        assert torch.equal(torch.cat([r[step].images for r in ranks]), whole.images)
    assert all(torch.equal(a.indices, b.indices) for a, b in zip(batches[3:], train.epoch(0, 3)))


def test_random_plan_batches_are_the_epoch_permutation() -> None:
    plan = make_plan("random", TARGETS, 8, seed=1)
    assert isinstance(plan, EpochPlan)
    assert torch.equal(torch.cat(list(plan.batches(4))), plan.permutation(4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(m=3, batch_size=8), "not divisible by --m-per-class 3"),
        (dict(m=2, batch_size=16), "needs 8 classes per batch, but the training set has 7"),
        (dict(m=2, batch_size=6, world_size=2), "not divisible by --m-per-class 2 x 2 processes"),
        (dict(m=0, batch_size=6), "--m-per-class must be >= 1"),
    ],
)
def test_bad_batch_shapes_are_user_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(OKDUserError, match=message):
        MPerClassPlan(TARGETS, **kwargs)


def test_bad_sampler_names_are_user_errors() -> None:
    with pytest.raises(OKDUserError, match="--sampler must be one of"):
        make_plan("balanced", TARGETS, 8)
    with pytest.raises(OKDUserError, match="--sampler must be one of"):
        build_data(DataConfig(dataset="synthetic", sampler="balanced"))
