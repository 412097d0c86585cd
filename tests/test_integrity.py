"""A damaged checkpoint is refused, never used: every file carries a SHA-256 of its bytes, and
--resume on a damaged last.pt names the intact checkpoint (previous.pt, best.pt) it can continue from."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

import okd
from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint
from okd.engine.integrity import DamagedCheckpoint, seal, verify
from okd.engine.rundir import read_metrics

TINY = ["--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8", "--synthetic-classes", "4",
        "--synthetic-size", "16", "--batch-size", "8", "--eval-batch-size", "16", "--quiet", "--device", "cpu",
        "--method", "dml", "--num-peers", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 3-epoch run, and the same run stopped after 2 epochs (last.pt: epoch 2, previous.pt: epoch 1)."""
    root = tmp_path_factory.mktemp("integrity")
    assert main(["train", *TINY, "--out", str(root / "full"), "--epochs", "3"]) == 0
    assert main(["train", *TINY, "--out", str(root / "two"), "--epochs", "2"]) == 0
    return root / "full", root / "two"


def flip_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_previous_checkpoint_is_kept(runs: tuple[Path, Path]) -> None:
    _, two = runs
    assert (load_checkpoint(two / "last.pt")["epoch"], load_checkpoint(two / "previous.pt")["epoch"]) == (2, 1)


@pytest.mark.parametrize("damage", ["flip-early", "flip-middle", "flip-seal", "truncate"])
def test_damaged_checkpoint_is_refused_by_every_reader(runs: tuple[Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str], damage: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs[1], run)
    last = run / "last.pt"
    if damage == "truncate":
        last.write_bytes(last.read_bytes()[:-40])
    else:
        flip_byte(last, {"flip-early": 0.1, "flip-middle": 0.5, "flip-seal": 0.999}[damage])
    assert main(["eval", "--checkpoint", str(last), "--device", "cpu"]) == 2
    assert f"checkpoint {last} is" in one_line_error(capsys)
    assert main(["export", "--checkpoint", str(last), "--out", str(tmp_path / "m.pt")]) == 2
    assert f"checkpoint {last} is" in one_line_error(capsys) and not (tmp_path / "m.pt").exists()
    with pytest.raises(DamagedCheckpoint):
        okd.load_peer(last)


def test_resume_from_a_damaged_last_names_the_intact_one_and_its_advice_works(
        runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full, two = runs
    run = tmp_path / "run"
    shutil.copytree(two, run)
    flip_byte(run / "last.pt")
    assert main(["train", *TINY, "--out", str(run), "--epochs", "3", "--resume"]) == 2
    err = one_line_error(capsys)
    assert f"checkpoint {run / 'last.pt'} is damaged" in err
    assert f"previous.pt is intact (epoch 1 done): to continue from it, cp {run / 'previous.pt'} {run / 'last.pt'}" in err
    shutil.copy(run / "previous.pt", run / "last.pt")  # the advice, followed
    assert main(["train", *TINY, "--out", str(run), "--epochs", "3", "--resume"]) == 0
    resumed, reference = load_checkpoint(run / "last.pt")["model"], load_checkpoint(full / "last.pt")["model"]
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]


def test_resume_with_nothing_intact_says_so(runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs[1], run)
    for name in ("last.pt", "previous.pt", "best.pt"):
        flip_byte(run / name)
    assert main(["train", *TINY, "--out", str(run), "--epochs", "3", "--resume"]) == 2
    assert "No intact checkpoint is left" in one_line_error(capsys)


def test_unsealed_checkpoints_are_checked_by_their_zip_crcs(tmp_path: Path) -> None:
    """A file written before the seal existed: its per-member CRC-32s still catch flipped tensor bytes."""
    buffer = io.BytesIO()
    torch.save({"w": torch.arange(4096.0)}, buffer)
    data = buffer.getvalue()
    verify(tmp_path / "old.pt", data)
    verify(tmp_path / "new.pt", seal(data))
    member = zipfile.ZipFile(io.BytesIO(data)).getinfo("archive/data/0")
    at = data.index(torch.arange(4096.0).numpy().tobytes()[400:432], member.header_offset)
    damaged = bytearray(data)
    damaged[at] ^= 0x01
    with pytest.raises(DamagedCheckpoint, match="archive/data/0 fails its CRC check"):
        verify(tmp_path / "old.pt", bytes(damaged))
    with pytest.raises(DamagedCheckpoint, match="no longer match the SHA-256"):
        verify(tmp_path / "new.pt", seal(data)[:at] + bytes([seal(data)[at] ^ 1]) + seal(data)[at + 1:])


def test_previous_is_kept_on_a_file_system_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import okd.engine.checkpoint as checkpoint

    def no_links(source: object, target: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(checkpoint.os, "link", no_links)
    for epoch in (1, 2):
        checkpoint.save_checkpoint(tmp_path / "last.pt", {"config": {}, "model": {}, "epoch": epoch}, previous=tmp_path / "previous.pt")
    assert (load_checkpoint(tmp_path / "last.pt")["epoch"], load_checkpoint(tmp_path / "previous.pt")["epoch"]) == (2, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "previous.pt"]
