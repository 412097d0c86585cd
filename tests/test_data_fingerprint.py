"""--resume checks that the data is the run's: a fingerprint (sizes, label counts, a hash of a sample)
is saved with every run; --data may move, the data may not change."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from datasets_helpers import write_cifar10, write_imagenet_tree

from okd.cli.main import main
from okd.data.fingerprint import check_same_data
from okd.engine.checkpoint import load_checkpoint
from okd.errors import OKDUserError

COMMON = ["--batch-size", "8", "--eval-batch-size", "8", "--limit-batches", "1", "--quiet", "--device", "cpu",
          "--method", "dml", "--num-peers", "2"]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_cifar10_moved_is_fine_changed_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cifar10(tmp_path / "a", per_batch=4, n_test=8)
    out = tmp_path / "run"
    train = ["train", "--dataset", "cifar10", *COMMON, "--out", str(out)]
    assert main([*train, "--data", str(tmp_path / "a"), "--epochs", "1"]) == 0
    assert load_checkpoint(out / "last.pt")["data_fingerprint"]["train label counts"]  # saved with the run
    shutil.move(tmp_path / "a", tmp_path / "moved")
    assert main([*train, "--data", str(tmp_path / "moved"), "--epochs", "2", "--resume"]) == 0  # --data may move
    write_cifar10(tmp_path / "bigger", per_batch=5, n_test=8)
    assert main([*train, "--data", str(tmp_path / "bigger"), "--epochs", "3", "--resume"]) == 2
    err = one_line_error(capsys)
    assert f"the data in --dataset cifar10 at {tmp_path / 'bigger'} is not the data the run began with" in err
    assert "train images: [20," in err and "then, [25," in err
    assert load_checkpoint(out / "last.pt")["epoch"] == 2  # nothing was trained on the other data


def test_an_image_folder_whose_file_changed_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_imagenet_tree(tmp_path / "images", classes=2, per_class=4, size=16, val_per_class=2)
    out = tmp_path / "run"
    train = ["train", "--dataset", "folder", "--data", str(root), "--image-size", "16", *COMMON, "--out", str(out)]
    assert main([*train, "--epochs", "1"]) == 0
    victim = sorted((root / "train").rglob("*.JPEG"))[2]
    victim.write_bytes(victim.read_bytes() + b"\0" * 10)  # same name, other bytes
    assert main([*train, "--epochs", "2", "--resume"]) == 2
    assert "train sample contents differ" in one_line_error(capsys)


def test_label_counts_name_the_class_and_old_runs_are_not_checked() -> None:
    saved = {"train images": [10], "train label counts": [5, 5], "train sample sha256": "a"}
    with pytest.raises(OKDUserError, match=r"train label counts of class 0: 5 then, 6 now \(\+1 more classes\); train sample contents differ"):
        check_same_data(saved, {"train images": [10], "train label counts": [6, 4], "train sample sha256": "b"}, "x")
    check_same_data(None, saved, "x")  # a run saved before fingerprints existed
