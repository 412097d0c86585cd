"""The embedded digits dataset: real scikit-learn digits, fixed split, constants that match the data."""

from __future__ import annotations

import torch

from okd.data import DIGITS_MEAN, DIGITS_STD, DataConfig, build_data
from okd.data.digits import digits_mean_std, load_digits_uint8


def test_sizes_and_split_are_fixed():
    spec, train, test = build_data(DataConfig(dataset="digits", batch_size=128, eval_batch_size=100))
    assert (spec.num_train, spec.num_test, spec.num_classes, spec.input_size) == (1437, 360, 10, 32)
    assert len(train) == 12 and len(test) == 4
    assert torch.equal(torch.unique(spec.train_targets), torch.arange(10))
    train_x, train_y, test_x, test_y = load_digits_uint8()
    assert train_x.shape == (1437, 3, 32, 32) and train_x.dtype == torch.uint8
    assert int(train_x.max()) == 255 and int(train_x.min()) == 0
    assert torch.equal(train_x[:, 0], train_x[:, 2])  # grey replicated to three channels
    assert torch.equal(spec.train_targets, train_y)


def test_constants_match_the_training_set():
    mean, std = digits_mean_std()
    assert all(abs(a - b) < 5e-5 for a, b in zip(mean, DIGITS_MEAN))
    assert all(abs(a - b) < 5e-5 for a, b in zip(std, DIGITS_STD))


def test_crop_without_flip():
    """Mirrored digits are other symbols: only the crop is random, so some sample keeps its exact pixels."""
    _, train, _ = build_data(DataConfig(dataset="digits", batch_size=1437))
    (batch,) = list(train.epoch(0))
    train_x = load_digits_uint8()[0]
    plain = (train_x[batch.indices].float() / 255 - DIGITS_MEAN[0]) / DIGITS_STD[0]
    same = (batch.images - plain).abs().flatten(1).max(1).values < 1e-5
    assert 0 < int(same.sum()) < 1437  # offset (4, 4) is drawn for about 1/81 of the samples
    mirrored = (batch.images - plain.flip(-1)).abs().flatten(1).max(1).values < 1e-5
    symmetric = (train_x == train_x.flip(-1)).flatten(1).all(1)[batch.indices]
    assert not (mirrored & ~same & ~symmetric).any()
