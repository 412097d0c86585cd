"""--train-per-class: a fixed few-label subset of an in-memory training set."""

from __future__ import annotations

import pytest
import torch

from okd.cli.main import main
from okd.data.build import first_per_class
from okd.errors import OKDUserError


def test_first_per_class_keeps_the_first_k_of_each_class_in_training_order() -> None:
    labels = torch.tensor([2, 0, 1, 0, 2, 1, 0, 2, 1, 1])
    images = torch.arange(10).view(10, 1, 1, 1)
    kept_images, kept_labels = first_per_class(images, labels, 2, 3)
    # first two 0s at positions 1, 3; first two 1s at 2, 5; first two 2s at 0, 4 — training order kept
    assert kept_images.flatten().tolist() == [0, 1, 2, 3, 4, 5]
    assert kept_labels.tolist() == [2, 0, 1, 0, 2, 1]


def test_first_per_class_refuses_more_than_the_smallest_class_has() -> None:
    labels = torch.tensor([0, 0, 0, 1])
    with pytest.raises(OKDUserError, match=r"--train-per-class must be in \[1, 1\]"):
        first_per_class(torch.zeros(4, 1, 1, 1), labels, 2, 2)


def test_train_per_class_through_the_cli(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = main(["train", "--dataset", "digits", "--train-per-class", "3", "--batch-size", "10", "--epochs", "1",
                 "--device", "cpu", "--quiet", "--out", str(out), "--eval-batch-size", "360"])
    assert code == 0
    assert "30 train" in (out / "train.log").read_text()
    assert main(["train", "--dataset", "digits", "--train-per-class", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--train-per-class must be > 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
