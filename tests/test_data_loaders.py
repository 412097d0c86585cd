"""The loader contract the engine relies on: determinism, resume, rank slicing, eval sharding."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from okd.data import Batch, DataConfig, build_data
from okd.data.augment import CIFAR100_MEAN, CIFAR100_STD, Normalizer, augment_batch
from okd.data.loaders import EvalLoader, TrainLoader
from okd.data.sampling import EpochPlan, derive_seed, even_split
from okd.errors import OKDUserError


def synthetic(**kw) -> DataConfig:
    base = dict(dataset="synthetic", batch_size=32, eval_batch_size=20, synthetic_train=100, synthetic_test=50, seed=3)
    base.update(kw)
    return DataConfig(**base)


def epoch_batches(cfg: DataConfig, epoch: int = 0, start: int = 0) -> list[Batch]:
    return list(build_data(cfg)[1].epoch(epoch, start))


def test_api_shapes_and_types():
    spec, train, test = build_data(synthetic())
    assert isinstance(train, TrainLoader) and isinstance(test, EvalLoader)
    assert (spec.name, spec.num_classes, spec.num_train, spec.num_test, spec.input_size) == ("synthetic", 10, 100, 50, 32)
    assert spec.train_targets.dtype == torch.int64 and spec.train_targets.shape == (100,)
    assert len(train) == 4  # ceil(100 / 32), no drop_last
    batches = list(train.epoch(0))
    assert [len(b.indices) for b in batches] == [32, 32, 32, 4]
    first = batches[0]
    assert first.images.dtype == torch.float32 and first.images.shape == (32, 3, 32, 32)
    assert first.targets.dtype == torch.int64 and first.indices.dtype == torch.int64
    assert torch.equal(first.targets, spec.train_targets[first.indices])


def test_every_index_once_per_epoch():
    for epoch in (0, 1):
        seen = torch.cat([b.indices for b in epoch_batches(synthetic(), epoch)])
        assert torch.equal(seen.sort().values, torch.arange(100))


def test_deterministic_per_epoch_and_different_across_epochs():
    a, b = epoch_batches(synthetic(), 2), epoch_batches(synthetic(), 2)
    for x, y in zip(a, b):
        assert torch.equal(x.images, y.images) and torch.equal(x.indices, y.indices)
    c = epoch_batches(synthetic(), 3)
    assert not torch.equal(a[0].indices, c[0].indices)
    # same samples, different epoch: the augmentation differs too
    first = {int(i): img for i, img in zip(a[0].indices, a[0].images)}
    other = {int(i): img for batch in c for i, img in zip(batch.indices, batch.images)}
    assert any(not torch.equal(img, other[i]) for i, img in first.items())


def test_global_rng_untouched_and_irrelevant():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = epoch_batches(synthetic(), 1)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(12345)
    b = epoch_batches(synthetic(), 1)
    assert all(torch.equal(x.images, y.images) for x, y in zip(a, b))


def test_start_step_resumes_exactly():
    full = epoch_batches(synthetic(), 5)
    for k in (0, 1, 3, 4):
        tail = epoch_batches(synthetic(), 5, k)
        assert len(tail) == len(full) - k
        for x, y in zip(full[k:], tail):
            assert torch.equal(x.images, y.images) and torch.equal(x.indices, y.indices) and torch.equal(x.targets, y.targets)
    with pytest.raises(ValueError):
        build_data(synthetic())[1].epoch(0, 5)


def test_start_step_skips_without_augmenting(monkeypatch):
    import okd.data.loaders as loaders

    calls = []
    original = loaders.augment_batch
    monkeypatch.setattr(loaders, "augment_batch", lambda *a, **k: calls.append(1) or original(*a, **k))
    list(build_data(synthetic())[1].epoch(0, 3))
    assert len(calls) == 1


@pytest.mark.parametrize("channels_last", [False, True])
def test_two_ranks_concatenate_to_the_single_process_batch(channels_last):
    single = epoch_batches(synthetic(channels_last=channels_last), 1)
    ranks = [epoch_batches(synthetic(world_size=2, rank=r, channels_last=channels_last), 1) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for k, whole in enumerate(single):
        parts = [ranks[0][k], ranks[1][k]]
        assert all(len(p.indices) > 0 for p in parts)
        assert torch.equal(torch.cat([p.indices for p in parts]), whole.indices)
        assert torch.equal(torch.cat([p.images for p in parts]), whole.images)
        assert torch.equal(torch.cat([p.targets for p in parts]), whole.targets)
    assert [len(b.indices) for b in ranks[0]] == [16, 16, 16, 2]


def test_three_ranks_uneven_tail():
    cfg = synthetic(batch_size=30, synthetic_train=100)  # last global batch: 10 samples
    single = epoch_batches(cfg)
    ranks = [epoch_batches(synthetic(batch_size=30, world_size=3, rank=r), 0) for r in range(3)]
    assert [len(r[-1].indices) for r in ranks] == [4, 3, 3]
    assert torch.equal(torch.cat([r[-1].indices for r in ranks]), single[-1].indices)


def test_tiny_tail_is_merged_rather_than_leaving_a_rank_empty():
    plan = EpochPlan(num_items=65, batch_size=32, world_size=4)
    assert plan.steps == 2 and plan.bounds(1) == (32, 65)  # a 1-sample tail joins the last batch
    assert EpochPlan(num_items=65, batch_size=32, world_size=1).steps == 3
    loaders = [build_data(synthetic(synthetic_train=65, world_size=4, rank=r))[1] for r in range(4)]
    sizes = [[len(b.indices) for b in loader.epoch(0)] for loader in loaders]
    assert sizes == [[8, 9], [8, 8], [8, 8], [8, 8]]
    seen = torch.cat([b.indices for loader in loaders for b in loader.epoch(0)])
    assert torch.equal(seen.sort().values, torch.arange(65))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_shards_cover_the_test_set_once(world_size):
    loaders = [build_data(synthetic(world_size=world_size, rank=r, batch_size=30))[2] for r in range(world_size)]
    batches = [b for loader in loaders for b in loader]
    assert sum(len(loader) for loader in loaders) == len(batches)
    assert torch.equal(torch.cat([b.indices for b in batches]), torch.arange(50))
    whole = list(build_data(synthetic(batch_size=30))[2])
    assert torch.equal(torch.cat([b.images for b in batches]), torch.cat([b.images for b in whole]))
    assert torch.equal(torch.cat([b.targets for b in batches]), torch.cat([b.targets for b in whole]))


def test_eval_is_normalised_without_augmentation():
    spec, _, test = build_data(synthetic(eval_batch_size=64))
    (batch,) = list(test)
    from okd.data.synthetic import make_synthetic

    raw = make_synthetic(100, 50, 10, 32, 3)[2]
    assert torch.allclose(batch.images, (raw.float() / 255 - 0.5) / 0.25, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_crop_flip_matches_per_image_reference(channels_last):
    generator = torch.Generator().manual_seed(0)
    store = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=generator)
    indices = torch.randint(0, 40, (64,), generator=generator)
    offsets = torch.randint(0, 9, (64, 2), generator=generator)
    offsets[:4] = torch.tensor([[0, 0], [8, 8], [0, 8], [8, 0]])  # the extreme windows
    flips = torch.randint(0, 2, (64,), generator=generator)
    norm = Normalizer(CIFAR100_MEAN, CIFAR100_STD)
    out = augment_batch(store, indices, norm, 4, offsets, flips, channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last) == channels_last
    for b in range(64):
        padded = F.pad(store[indices[b]], (4, 4, 4, 4))
        dy, dx = offsets[b].tolist()
        crop = padded[:, dy : dy + 32, dx : dx + 32]
        if flips[b]:
            crop = crop.flip(-1)
        expected = (crop.float() / 255 - torch.tensor(CIFAR100_MEAN)[:, None, None]) / torch.tensor(CIFAR100_STD)[:, None, None]
        assert torch.allclose(out[b], expected, atol=1e-5)


def test_channels_last_option():
    batch = epoch_batches(synthetic(channels_last=True))[0]
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    plain = epoch_batches(synthetic())[0]
    assert torch.equal(batch.images, plain.images)
    evaluated = next(iter(build_data(synthetic(channels_last=True))[2]))
    assert evaluated.images.is_contiguous(memory_format=torch.channels_last)


def test_synthetic_without_crop_when_not_32():
    spec, train, _ = build_data(synthetic(synthetic_size=16))
    assert spec.input_size == 16 and next(iter(train.epoch(0))).images.shape == (32, 3, 16, 16)


def test_config_errors():
    with pytest.raises(OKDUserError, match="known datasets: cifar100, cifar10, imagenet, folder, digits, synthetic"):
        build_data(DataConfig(dataset="svhn"))  # (was "mnist", which okd now reads)
    with pytest.raises(OKDUserError, match="not divisible"):
        build_data(synthetic(batch_size=31, world_size=2))
    with pytest.raises(OKDUserError, match="rank"):
        build_data(synthetic(world_size=2, rank=2))
    with pytest.raises(OKDUserError, match="device"):
        build_data(synthetic(device="gpu9"))


def test_helpers():
    assert derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    assert [even_split(10, 3, r) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [even_split(2, 4, r) for r in range(4)] == [(0, 1), (1, 2), (2, 2), (2, 2)]


def test_epoch_plan_partitions_every_epoch_for_many_shapes():
    for num_items in (1, 2, 7, 33, 64, 65, 100):
        for world_size in (1, 2, 3, 4, 8):
            for per_rank in (1, 3, 8):
                batch = per_rank * world_size
                plans = [EpochPlan(num_items, batch, world_size, rank, seed=1) for rank in range(world_size)]
                order = plans[0].permutation(0)
                seen = []
                for step in range(plans[0].steps):
                    start, stop = plans[0].bounds(step)
                    sizes = []
                    for plan in plans:
                        lo, hi = plan.rank_bounds(stop - start)
                        sizes.append(hi - lo)
                        seen += order[start + lo : start + hi].tolist()
                    assert max(sizes) - min(sizes) <= 1
                    assert min(sizes) > 0 or num_items < world_size
                assert sorted(seen) == list(range(num_items))
                assert plans[0].steps in (-(-num_items // batch), -(-num_items // batch) - 1)
