"""Links inside class folders never make an image count twice or under another class (a loop back
to a parent included); links out to other storage are followed; the saved counts are the true ones."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

from datasets_helpers import write_imagenet_tree

from okd.cli.main import main
from okd.data.imagenet import open_folders


def linked_tree(tmp_path: Path) -> Path:
    """2 classes x 3 images, then every kind of link: 5 images for n1 (2 through a link to other storage)."""
    root = write_imagenet_tree(tmp_path / "images", classes=2, per_class=3, size=16, val_per_class=1)
    cat, dog = root / "train" / "n00000000", root / "train" / "n00000001"
    external = write_imagenet_tree(tmp_path / "storage", classes=1, per_class=2, size=16, val_per_class=1) / "train" / "n00000000"
    first, second = sorted(cat.iterdir())[:2]
    os.symlink(first, cat / "again.JPEG")  # another name in its own class
    os.symlink(root / "train", cat / "loop")  # a parent: os.walk would follow it until the path is too long
    os.symlink(root, cat / "dataset")  # the folder that holds the split
    os.symlink(cat, dog / "cat_alias")  # another class's folder
    os.symlink(second, dog / "stolen.JPEG")  # another class's image
    os.symlink(external, dog / "more")  # other storage: followed
    os.symlink(external, dog / "more_again")  # the same storage again: counted once
    return root


def test_folder_dataset_counts_every_image_once_in_its_class(tmp_path: Path) -> None:
    root = linked_tree(tmp_path)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "folder", "--data", str(root), "--image-size", "16", "--batch-size", "4",
                 "--eval-batch-size", "4", "--epochs", "1", "--limit-batches", "1", "--quiet", "--device", "cpu",
                 "--method", "dml", "--num-peers", "2", "--out", str(out)]) == 0
    assert json.loads((out / "data.json").read_text())["train_counts"] == [3, 5]
    log = (out / "train.log").read_text()
    assert "skipped 3 link(s) that lead out of their class folder" in log  # loop, cat_alias, stolen
    assert "skipped 2 link(s) that are another name of an image or folder already counted" in log  # again, more_again
    assert "skipped 1 link(s) that lead to a folder that holds the dataset (a loop)" in log


def test_imagenet_layout_counts_every_image_once_in_its_class(tmp_path: Path) -> None:
    train, val = open_folders(linked_tree(tmp_path))
    assert Counter(train.targets) == {0: 3, 1: 5} and len(val.samples) == 2
    assert len({os.path.realpath(path) for path, _ in train.samples}) == 8
    assert any("lead out of their class folder" in note for note in train.notes)
