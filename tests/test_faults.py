"""Signals and disks: SIGHUP/SIGUSR1 save and release the folder like SIGTERM; Ctrl-C while okd is
still importing exits 130 without a traceback; a full disk at the first save, at lock creation or
at export is exit 2 with one line whose advice works, leaving no empty lock or temp file; a valid
export path works however long its name."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from process_helpers import okd_process, pause_prelude, wait_for

from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint

TINY = ["--dataset", "synthetic", "--synthetic-train", "32", "--synthetic-test", "8", "--synthetic-classes", "4",
        "--synthetic-size", "16", "--batch-size", "8", "--eval-batch-size", "8", "--quiet", "--device", "cpu",
        "--method", "dml", "--num-peers", "2"]


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def leftovers(folder: Path) -> list[str]:
    """Temp files, lock drafts and empty files: what a failed write must never leave."""
    if not folder.exists():
        return []
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and (p.name.endswith((".tmp", ".stale", ".okd.lock"))
                                                                      or p.stat().st_size == 0))


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGUSR1])
def test_hangup_and_scheduler_warning_save_and_release_like_sigterm(tmp_path: Path, signum: int) -> None:
    out = tmp_path / "run"
    proc = okd_process([*TINY, "--out", str(out), "--epochs", "2"], prelude=pause_prelude(tmp_path, epoch=1, step=1))
    wait_for(lambda: (tmp_path / "paused").exists() or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signum)  # pending while the step waits: it finishes that step, then saves
    (tmp_path / "go").touch()
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, stderr
    assert f"interrupted by {signal.Signals(signum).name} at epoch 2, step 2" in stdout and "Traceback" not in stderr
    state = load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 2)
    assert not (out / ".okd.lock").exists()


# Child-process patch: the first `import torch` (inside okd's command set-up) marks the moment and waits.
_PAUSE_IMPORT = """
import os, sys, time
class _PauseTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            open({paused!r}, "w").close()
            while True:
                time.sleep(0.01)
        return None
sys.meta_path.insert(0, _PauseTorch())
"""


def test_ctrl_c_while_importing_exits_130_without_a_traceback(tmp_path: Path) -> None:
    paused = tmp_path / "paused"
    proc = okd_process([*TINY, "--out", str(tmp_path / "run")], prelude=_PAUSE_IMPORT.format(paused=str(paused)))
    wait_for(lambda: paused.exists() or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130 and stderr.strip() == "okd: interrupted", stderr
    assert not (tmp_path / "run").exists()


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``folder`` (root only; skipped where mounting is not allowed)."""
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): the full disk is simulated in the other tests")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def grow(disk: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(disk)], check=True)


def fill(disk: Path) -> Path:
    """Fill the disk to the last byte; deleting the returned file frees it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while os.write(fd, b"\0" * 4096):
            pass
    os.close(fd)
    return filler


def test_a_full_disk_at_the_first_save_lock_and_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with small_disk(tmp_path / "disk", "1m") as disk:
        out = disk / "run"
        command = ["train", *TINY, "--out", str(out), "--epochs", "1"]
        assert main(command) == 2  # the run folder fits, the first checkpoint (megabytes) does not
        err = one_line_error(capsys)
        assert f"could not write checkpoint {out / 'last.pt'}: No space left on device (nothing of it was written); " \
               "free space on its disk, then rerun the same command" in err
        assert leftovers(disk) == []
        grow(disk, "64m")
        assert main(command) == 0  # the advice works
        assert load_checkpoint(out / "last.pt")["epoch"] == 1

        filler = fill(disk)
        again = ["train", *TINY, "--out", str(disk / "second"), "--epochs", "1"]
        assert main(again) == 2  # the lock (or the folder's first file) cannot be written
        assert "No space left on device" in one_line_error(capsys)
        assert leftovers(disk) == [], "no empty lock, temp file or draft"
        export = ["export", "--checkpoint", str(out / "last.pt"), "--out", str(disk / "model.pt")]
        assert main(export) == 2
        err = one_line_error(capsys)
        assert f"cannot write {disk / 'model.pt'}: No space left on device; nothing was written" in err
        assert leftovers(disk) == [] and not (disk / "model.pt").exists()
        filler.unlink()
        assert main(again) == 0 and main(export) == 0


def test_a_full_disk_while_writing_the_lock_leaves_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Where no tmpfs can be mounted: the lock's write fails with ENOSPC (fault injection)."""
    import okd.engine.runlock as runlock

    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".tmp") and ".okd.lock." in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(runlock.os, "write", full)
    out = tmp_path / "run"
    command = ["train", *TINY, "--out", str(out), "--epochs", "1", "--limit-batches", "1"]
    assert main(command) == 2
    err = one_line_error(capsys)
    assert f"cannot write to output folder {out}: No space left on device; free space on its disk, then rerun the same command" in err
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    assert main(command) == 0


def test_an_export_name_at_the_file_system_limit_works(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run), "--epochs", "1", "--limit-batches", "1"]) == 0
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    # a state dict gets its metadata beside it as NAME.json: its own name may use the limit less 5 bytes
    for fmt, suffix, room in (("state_dict", ".pt", len(".json")), ("torchscript", ".ts", 0)):
        out = tmp_path / ("m" * (limit - room - len(suffix)) + suffix)
        assert main(["export", "--checkpoint", str(run / "last.pt"), "--format", fmt, "--out", str(out)]) == 0
        assert out.exists() and leftovers(tmp_path) == []
