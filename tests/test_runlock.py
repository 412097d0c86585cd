"""One live run per folder: a second run (new, --resume or --overwrite) is refused and touches nothing;
the lock of a killed run is taken over; a lock from another machine is never taken over silently."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from process_helpers import okd_process, pause_prelude, wait_for

from okd.cli.main import main
from okd.engine.runlock import LOCK_NAME, RunLock, process_start_time
from okd.errors import OKDUserError

TINY = ["--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8", "--synthetic-classes", "4",
        "--synthetic-size", "16", "--batch-size", "8", "--eval-batch-size", "8", "--quiet", "--device", "cpu",
        "--method", "dml", "--num-peers", "2", "--epochs", "1"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # exited and reaped: its pid names no process
    return child.pid


def write_lock(folder: Path, **record: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    lock.write_text(json.dumps({"host": socket.gethostname(), "since": "2020-01-01T00:00:00+00:00",
                                "command": "okd train --out x", **record}))
    return lock


@pytest.mark.slow
def test_a_second_run_into_a_live_runs_folder_is_refused_and_touches_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    first = okd_process([*TINY, "--epochs", "2", "--out", str(out)], prelude=pause_prelude(tmp_path, epoch=1, step=0))
    try:
        wait_for(lambda: (tmp_path / "paused").exists() or first.poll() is not None)
        assert first.poll() is None, first.communicate()
        before = snapshot(out)  # epoch 1's checkpoints and metrics, the log, the lock
        assert {"last.pt", "metrics.jsonl", "train.log", LOCK_NAME} <= set(before)
        for extra in ([], ["--resume"], ["--overwrite"]):
            assert main(["train", *TINY, "--epochs", "2", "--out", str(out), *extra]) == 2
            err = capsys.readouterr().err
            assert f"{out} is in use by a live run: pid {first.pid}@{socket.gethostname()} since " in err, (extra, err)
            assert snapshot(out) == before, extra
    finally:
        (tmp_path / "go").touch()
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert "done: dml resnet32 on synthetic, 2 epochs" in stdout
    assert not (out / LOCK_NAME).exists()
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_the_lock_of_a_dead_run_is_taken_over_with_a_note(tmp_path: Path) -> None:
    out = tmp_path / "run"
    pid = dead_pid()
    write_lock(out, pid=pid, process_start=None)
    assert main(["train", *TINY, "--out", str(out)]) == 0
    log = (out / "train.log").read_text()
    assert f"note: took over the lock of a run that is no longer alive (pid {pid}@{socket.gethostname()} since 2020" in log
    assert not (out / LOCK_NAME).exists()  # released at the end


def test_a_reused_pid_does_not_keep_a_dead_runs_lock(tmp_path: Path) -> None:
    """Our own pid, alive, but started at another time than the lock says: another process now."""
    start = process_start_time(os.getpid())
    if start is None:
        pytest.skip("needs /proc to read process start times")
    write_lock(tmp_path, pid=os.getpid(), process_start=start + 1)
    assert RunLock(tmp_path).check() is not None  # stale
    write_lock(tmp_path, pid=os.getpid(), process_start=start)
    with pytest.raises(OKDUserError, match=f"in use by a live run: pid {os.getpid()}@"):
        RunLock(tmp_path).check()


def test_a_lock_from_another_machine_is_refused_with_how_to_remove_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    lock = write_lock(out, pid=dead_pid(), host="elsewhere.example", process_start=1)
    before = snapshot(out)
    for extra in ([], ["--overwrite"]):
        assert main(["train", *TINY, "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert "is locked by a run on another machine: pid" in err and "@elsewhere.example" in err
        assert f"delete {lock} and retry" in err and "Traceback" not in err
        assert snapshot(out) == before


def test_a_run_refused_by_a_lock_taken_after_its_check_creates_nothing(tmp_path: Path) -> None:
    """Two runs start at once: the one whose O_EXCL create fails leaves the folder as the winner made it."""
    folder = tmp_path / "run"
    winner, loser = RunLock(folder), RunLock(folder)
    folder.mkdir()
    assert loser.check() is None  # the loser checked before the winner locked
    assert winner.acquire() is None
    before = snapshot(folder)
    with pytest.raises(OKDUserError, match="in use by a live run"):
        loser.acquire()
    assert snapshot(folder) == before and not loser.held
    winner.release()
    assert not (folder / LOCK_NAME).exists()


def test_an_unreadable_lock_is_refused(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("{not json")
    with pytest.raises(OKDUserError, match="unreadable lock file .*delete that file"):
        RunLock(tmp_path).check()


def test_the_lock_is_released_when_the_run_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import okd.methods.dml as dml

    original = dml.DML.losses
    monkeypatch.setattr(dml.DML, "losses", lambda self, *a: {k: v * float("nan") for k, v in original(self, *a).items()})
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 2  # non-finite loss
    assert (out / "train.log").exists() and not (out / LOCK_NAME).exists()


def test_a_refused_run_creates_no_folder_and_no_lock(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--resume"]) == 2  # nothing to resume
    assert main(["train", *TINY, "--out", str(out), "--num-peers", "1"]) == 2  # dml needs two peers
    assert not out.exists()
