"""The run folder (docs/design.md §4): config.yaml, metrics.jsonl, last.pt, previous.pt (the last.pt before it),
best.pt, summary.json, train.log, data.json."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

import yaml

from okd.engine.checkpoint import TEMP_SUFFIX, atomic_write_bytes, retry_advice, temp_prefix
from okd.engine.runlock import RunLock
from okd.errors import OKDUserError

RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "previous.pt", "best.pt", "summary.json", "train.log", "data.json")
# A folder holds a run worth keeping once one of these exists (a checkpoint, or a finished run's
# summary). config.yaml, train.log, data.json and a metrics.jsonl without a checkpoint are what a run
# that failed before its first checkpoint (a crash, a full disk) leaves: nothing can continue from
# them, and the same command may replace them.
WORK_FILES = ("last.pt", "best.pt", "summary.json")


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.lock = RunLock(self.path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    last = property(lambda self: self.path / "last.pt")
    previous = property(lambda self: self.path / "previous.pt")  # the last.pt before the current one
    best = property(lambda self: self.path / "best.pt")
    summary = property(lambda self: self.path / "summary.json")
    log = property(lambda self: self.path / "train.log")

    def holds_run(self) -> bool:
        """Whether the folder holds work that a new run would destroy (a checkpoint or epoch metrics)."""
        return any((self.path / name).exists() for name in WORK_FILES)

    def check(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse a folder a live run is using, to clobber an existing run unless asked, or to resume
        nothing; creates nothing."""
        self.lock.check()
        if resume and not self.last.exists():
            raise OKDUserError(f"nothing to resume in {self.path}: no last.pt there (start a new run without --resume)")
        if not resume and not overwrite and self.holds_run():
            raise OKDUserError(f"{self.path} already holds a run; pass --resume to continue it or --overwrite to replace it")

    def prepare(self, *, resume: bool, overwrite: bool) -> str | None:
        """Create the folder (after check), take its lock, clear what a new run replaces.

        The lock is taken before anything in the folder is deleted or written, so a run refused
        because another one holds the folder touches nothing. Temp files that a ``kill -9`` during
        an atomic write left behind are deleted too (only those of the run's own files, named as
        the writer names them). Returns the note to log when the lock of a dead run was taken over.
        """
        self.check(resume=resume, overwrite=overwrite)
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            note = self.lock.acquire()  # also the writability check: a read-only folder loses nothing
        except OSError as exc:
            if created:
                _remove_if_empty(self.path)
            raise OKDUserError(f"cannot write to output folder {self.path}: {exc.strerror or exc}; "
                               f"{retry_advice(exc, self.last)}") from None
        except OKDUserError:  # another run took the folder between our check and here
            if created:
                _remove_if_empty(self.path)
            raise
        try:
            if not resume:
                for name in RUN_FILES:
                    (self.path / name).unlink(missing_ok=True)
            for name in RUN_FILES:
                for stale in self.path.glob(f"{temp_prefix(name)}*{TEMP_SUFFIX}"):
                    stale.unlink(missing_ok=True)
        except OSError as exc:
            self.lock.release()
            raise OKDUserError(f"cannot write to output folder {self.path}: {exc.strerror or exc}; "
                               f"{retry_advice(exc, self.last)}") from None
        return note

    def damaged_last(self, damage: OKDUserError) -> OKDUserError:
        """The error for a --resume whose last.pt is damaged: it names an intact checkpoint to continue from."""
        from okd.engine.checkpoint import load_checkpoint

        for candidate in (self.previous, self.best):
            try:
                state = load_checkpoint(candidate, for_resume=True)
            except OKDUserError:
                continue
            where = f"epoch {state['epoch']}" + (f", step {state['step']}" if state["step"] else "")
            return OKDUserError(f"{damage}. {candidate.name} is intact ({where} done): to continue from it, "
                                f"cp {candidate} {self.last} and rerun with --resume")
        return OKDUserError(f"{damage}. No intact checkpoint is left in {self.path} to continue from: start again with --overwrite")

    def write_config(self, plain: dict[str, Any]) -> None:
        self._write_text(self.config, yaml.safe_dump(plain, sort_keys=False))

    def write_data(self, manifest: dict[str, Any] | None) -> None:
        """data.json: the class names and, for an image folder, its validation split (as in each checkpoint)."""
        self._write_text(self.path / "data.json", json.dumps(manifest, indent=2))

    def write_summary(self, summary: dict[str, Any]) -> None:
        self._write_text(self.summary, json.dumps(summary, indent=2))

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One JSON line per epoch, written with a single write + fsync (never half a line after a crash)."""
        self._append(self.metrics, json.dumps(record) + "\n")

    def append_log(self, line: str) -> None:
        self._append(self.log, line.rstrip("\n") + "\n")

    def truncate_metrics(self, num_records: int) -> None:
        """On resume, drop records written after the checkpoint we resume from."""
        records = read_metrics(self.metrics)[:num_records]
        self._write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in records))

    def _write_text(self, path: Path, text: str) -> None:
        try:
            atomic_write_bytes(path, text.encode())
        except OSError as exc:
            raise OKDUserError(f"could not write {path}: {exc.strerror or exc}; {retry_advice(exc, self.last)}") from None

    def _append(self, path: Path, text: str) -> None:
        """All of ``text`` or none of it: a short write (a full disk) is cut off again, so the next
        line never lands after half a line."""
        data = text.encode()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                try:
                    if os.write(fd, data) != len(data):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, size)
                    raise
            finally:
                os.close(fd)
        except OSError as exc:
            raise OKDUserError(f"could not write {path}: {exc.strerror or exc}; {retry_advice(exc, self.last)}") from None


def _remove_if_empty(folder: Path) -> None:
    """Undo our mkdir, never anything another run put there meanwhile (rmdir fails on a non-empty folder)."""
    try:
        folder.rmdir()
    except OSError:
        pass


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Epoch records of a run; a trailing partial line (a crash mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records
