"""The lock file of a live run: two runs writing one folder would corrupt each other's checkpoints.

``.okd.lock`` (JSON: pid, host, process start time, start date, command) is written in full to a
temp file first and then hard-linked to its name (``link`` fails if the name exists), so of two
runs starting at once exactly one gets it, and a full disk never leaves an empty lock behind. A lock whose process is gone
(killed with ``kill -9``, or its pid reused by another program: the start time differs) is taken
over. A lock written on another machine cannot be checked, so it is never taken over silently.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from okd.errors import OKDUserError

LOCK_NAME = ".okd.lock"


def process_start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and parentheses
    try:
        return int(fields[19])  # field 22 of proc(5); fields[0] is field 3
    except (IndexError, ValueError):
        return None


def process_alive(pid: int, start_time: int | None) -> bool:
    """Whether ``pid`` on this host is still the process that wrote the lock (zombies count as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (macOS): the pid exists, assume it is ours
    if state in ("Z", "X"):
        return False
    return start_time is None or process_start_time(pid) == start_time


def _this_process() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "process_start": process_start_time(os.getpid()),
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]),
    }


class RunLock:
    """Held by the one live run (rank 0) of a folder, from before its first write until it exits."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False

    def read(self) -> dict[str, Any] | None:
        """The holder's record; None when there is no lock. A lock being written is waited for briefly."""
        for _ in range(50):
            try:
                text = self.path.read_text()
            except (FileNotFoundError, NotADirectoryError):  # no folder, or no lock in it
                return None
            except OSError as exc:
                raise OKDUserError(f"cannot read the lock file {self.path}: {exc.strerror or exc}") from None
            try:
                record = json.loads(text)
                if isinstance(record, dict) and isinstance(record.get("pid"), int) and isinstance(record.get("host"), str):
                    return record
            except json.JSONDecodeError:
                pass
            time.sleep(0.02)  # created but not yet written by the other run: a few microseconds of work
        raise OKDUserError(f"{self.folder} holds an unreadable lock file {self.path}; if no run is using the "
                           "folder, delete that file and retry")

    def check(self) -> dict[str, Any] | None:
        """Refuse when a live run (or a run on another machine) holds the folder; returns a dead run's record."""
        record = self.read()
        if record is None:
            return None
        holder = f"pid {record['pid']}@{record['host']} since {record.get('since', '?')}"
        command = f" ({record['command']})" if record.get("command") else ""
        if record["host"] != socket.gethostname():
            raise OKDUserError(
                f"{self.folder} is locked by a run on another machine: {holder}{command}; okd cannot check whether it is "
                f"still alive: if it is not, delete {self.path} and retry")
        if process_alive(record["pid"], record.get("process_start")):
            raise OKDUserError(f"{self.folder} is in use by a live run: {holder}{command}; wait for it to finish, "
                               "stop it, or use another --out")
        return record

    def acquire(self) -> str | None:
        """Take the lock (the folder exists); returns a note when a dead run's lock was taken over.

        OSError (a read-only folder) is left to the caller; a held lock is an OKDUserError.
        """
        stale = self.check()
        if stale is not None:
            self._remove_stale(stale)
        try:
            self._create(json.dumps(_this_process()).encode())
        except FileExistsError:  # another run was quicker: refuse with its name
            self.check()
            raise OKDUserError(f"{self.folder} was just locked by another run; use another --out") from None
        self.held = True
        self._remove_dead_drafts()
        if stale is None:
            return None
        return (f"note: took over the lock of a run that is no longer alive (pid {stale['pid']}@{stale['host']} "
                f"since {stale.get('since', '?')})")

    def _create(self, record: bytes) -> None:
        """Create the lock with its whole record, or not at all (FileExistsError when it is held)."""
        draft = self.folder / f"{LOCK_NAME}.{os.getpid()}.tmp"
        try:
            fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, record)
                os.fsync(fd)
            finally:
                os.close(fd)
            try:
                os.link(draft, self.path)
            except FileExistsError:
                raise
            except OSError as exc:  # a file system without hard links: an exclusive create, written at once
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                self._create_exclusive(record)
        finally:
            draft.unlink(missing_ok=True)

    def _remove_dead_drafts(self) -> None:
        """Drafts and set-aside locks that a killed process left (``.okd.lock.<pid>.tmp`` / ``.stale``)."""
        for leftover in self.folder.glob(f"{LOCK_NAME}.*.*"):
            pid, _, kind = leftover.name[len(LOCK_NAME) + 1 :].partition(".")
            if kind in ("tmp", "stale") and pid.isdigit() and not process_alive(int(pid), None):
                leftover.unlink(missing_ok=True)

    def _create_exclusive(self, record: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, record)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)

    def _remove_stale(self, stale: dict[str, Any]) -> None:
        """Remove the dead run's lock, but not a live one another run put there since we read it.

        The lock is moved aside first (atomic: of two runs taking over, one moves it, the other finds
        none), then checked to be the dead run's record; a live run's lock is put back.
        """
        aside = self.folder / f"{LOCK_NAME}.{os.getpid()}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, json.JSONDecodeError):
            moved = None
        if moved != stale:
            try:
                os.link(aside, self.path)  # put it back, unless yet another lock appeared meanwhile
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        """Delete the lock if this process holds it (every exit path of a run calls this)."""
        if not self.held:
            return
        self.held = False
        try:
            record = json.loads(self.path.read_text())
            if record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
                self.path.unlink()
        except (OSError, json.JSONDecodeError):
            pass
