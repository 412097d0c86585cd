"""ImageNet folders: layout checks, reference transforms, seeded per-sample augmentation, sharding."""

from __future__ import annotations

import shutil

import pytest
import torch

from datasets_helpers import write_imagenet_tree
from okd.data import IMAGENET_MEAN, IMAGENET_STD, DataConfig, build_data
from okd.data.imagenet import resized_crop_params
from okd.errors import OKDUserError


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return write_imagenet_tree(tmp_path_factory.mktemp("imagenet"), classes=3, per_class=4, size=40, val_per_class=3)


def config(root, **kw) -> DataConfig:
    base = dict(dataset="imagenet", data_dir=str(root), batch_size=4, eval_batch_size=4, workers=0, seed=1)
    base.update(kw)
    return DataConfig(**base)


def test_spec_shapes_and_classes(tree):
    spec, train, test = build_data(config(tree))
    assert (spec.name, spec.num_classes, spec.num_train, spec.num_test, spec.input_size) == ("imagenet", 3, 12, 9, 224)
    assert spec.train_targets.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert len(train) == 3 and len(test) == 3
    batches = list(train.epoch(0))
    assert all(b.images.shape == (4, 3, 224, 224) and b.images.dtype == torch.float32 for b in batches)
    seen = torch.cat([b.indices for b in batches])
    assert torch.equal(seen.sort().values, torch.arange(12))
    assert all(torch.equal(b.targets, spec.train_targets[b.indices]) for b in batches)
    assert [b.targets.tolist() for b in test] == [[0, 0, 0, 1], [1, 1, 2, 2], [2]]


def test_val_matches_the_reference_transforms(tree):
    from PIL import Image
    from torchvision import transforms

    reference = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    first = sorted((tree / "val" / "n00000000").iterdir())[0]
    expected = reference(Image.open(first).convert("RGB"))
    batch = next(iter(build_data(config(tree))[2]))
    assert torch.allclose(batch.images[0], expected, atol=1e-5)


def test_train_deterministic_resumable_and_epoch_dependent(tree):
    _, train, _ = build_data(config(tree))
    a, b = list(train.epoch(2)), list(train.epoch(2))
    assert all(torch.equal(x.images, y.images) and torch.equal(x.indices, y.indices) for x, y in zip(a, b))
    tail = list(train.epoch(2, start_step=1))
    assert len(tail) == 2 and all(torch.equal(x.images, y.images) for x, y in zip(a[1:], tail))
    other = list(train.epoch(3))
    by_index = {int(i): img for batch in other for i, img in zip(batch.indices, batch.images)}
    assert any(not torch.equal(img, by_index[int(i)]) for batch in a for i, img in zip(batch.indices, batch.images))


def test_two_ranks_equal_one_process(tree):
    single = list(build_data(config(tree))[1].epoch(1))
    ranks = [list(build_data(config(tree, world_size=2, rank=r))[1].epoch(1)) for r in (0, 1)]
    for k, whole in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][k].indices, ranks[1][k].indices]), whole.indices)
        assert torch.equal(torch.cat([ranks[0][k].images, ranks[1][k].images]), whole.images)
    shards = [list(build_data(config(tree, world_size=2, rank=r))[2]) for r in (0, 1)]
    assert torch.equal(torch.cat([b.indices for shard in shards for b in shard]), torch.arange(9))


def test_worker_processes_give_the_same_batches(tree):
    plain = list(build_data(config(tree))[1].epoch(0))
    _, train, test = build_data(config(tree, workers=2, channels_last=True))
    for _ in range(2):  # persistent workers, re-aimed at a new start step
        parallel = list(train.epoch(0, start_step=1))
        assert all(torch.equal(x.images, y.images) for x, y in zip(plain[1:], parallel))
        assert parallel[0].images.is_contiguous(memory_format=torch.channels_last)
    assert sum(len(b.indices) for b in test) == 9


def test_resized_crop_params_stay_inside_and_follow_the_recipe():
    generator = torch.Generator().manual_seed(0)
    for width, height in [(40, 40), (500, 375), (64, 20), (7, 300)]:
        for _ in range(50):
            top, left, h, w = resized_crop_params(width, height, generator)
            assert 0 <= top and 0 <= left and 0 < h and 0 < w and top + h <= height and left + w <= width
    # an impossible recipe falls back to the centred whole image clipped to the ratio range
    assert resized_crop_params(400, 100, generator, scale=(2.0, 2.0)) == (0, 133, 100, 133)
    assert resized_crop_params(100, 100, generator, scale=(2.0, 2.0)) == (0, 0, 100, 100)


def test_layout_errors(tmp_path, tree):
    with pytest.raises(OKDUserError, match="no ImageNet found at .*train is missing"):
        build_data(config(tmp_path / "none"))
    broken = tmp_path / "broken"
    shutil.copytree(tree, broken)
    shutil.rmtree(broken / "val" / "n00000002")
    (broken / "val" / "n00000009").mkdir()
    with pytest.raises(OKDUserError, match="different class folders .*missing from val: n00000002.*not in train: n00000009"):
        build_data(config(broken))
    shutil.rmtree(broken / "val" / "n00000009")
    (broken / "val" / "n00000002").mkdir()  # same classes, but an empty one
    with pytest.raises(OKDUserError, match="cannot read ImageNet folders"):
        build_data(config(broken))


def test_datasets_pickle_for_spawned_workers(tree):
    import pickle

    _, train, test = build_data(config(tree))
    for dataset in (train.loader.dataset, test.loader.dataset):
        clone = pickle.loads(pickle.dumps(dataset))
        assert clone.folder.classes == ["n00000000", "n00000001", "n00000002"]
