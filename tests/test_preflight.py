"""Resource preflight: what cannot fit in memory is refused before it is built, with the estimate."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasets_helpers import write_imagenet_tree

import okd.data.memory as memory
from okd.cli.main import main

TINY = ["--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8", "--synthetic-classes", "4",
        "--synthetic-size", "16", "--batch-size", "8", "--eval-batch-size", "8", "--quiet", "--device", "cpu",
        "--num-peers", "2", "--epochs", "1", "--limit-batches", "1"]


def refused(args: list[str], capsys: pytest.CaptureFixture[str], out: Path) -> str:
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not out.exists()
    return err


def test_synthetic_data_larger_than_memory_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = refused(["train", *TINY, "--method", "dml", "--synthetic-train", str(10**9)], capsys, tmp_path / "run")
    assert "--dataset synthetic (1000000000 + 8 images of 16px) needs at least 715.26 GiB" in err
    assert "use fewer --synthetic-train/--synthetic-test or a smaller --synthetic-size" in err


@pytest.mark.parametrize("method", ["dml", "mcl_okd"])
def test_a_cohort_that_cannot_fit_is_refused_with_its_estimate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str], method: str) -> None:
    """The cohort's state (memory banks included) and SGD's copies, counted without allocating them."""
    monkeypatch.setattr(memory, "available_memory", lambda device: 8 * 2**20)  # a machine with 8 MiB free
    err = refused(["train", *TINY, "--method", method, "--nce-k", "8"] if method == "mcl_okd" else ["train", *TINY, "--method", method],
                  capsys, tmp_path / "run")
    assert f"the {method} cohort of 2 x resnet32" in err and "GiB but cpu has 0.01 GiB of RAM free" in err
    assert "use fewer --num-peers" in err
    monkeypatch.setattr(memory, "available_memory", lambda device: 2**40)
    assert main(["train", *TINY, "--method", "dml", "--out", str(tmp_path / "run")]) == 0


def test_a_decoded_image_store_that_cannot_fit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    root = write_imagenet_tree(tmp_path / "images", classes=2, per_class=2, size=16, val_per_class=1)
    monkeypatch.setattr(memory, "available_memory", lambda device: 1000)
    err = refused(["train", "--dataset", "folder", "--data", str(root), "--image-size", "16", "--in-memory", "yes",
                   "--batch-size", "2", "--device", "cpu", "--method", "dml", "--quiet"], capsys, tmp_path / "run")
    assert "decoding 6 images of 16px into memory needs at least" in err and "use --in-memory no" in err
