"""Checkpoints that survive crashes and never execute code.

Saved atomically (temp file in the same folder, fsync, rename, fsync of the folder), so a
``kill -9`` at any moment leaves either the previous or the new file. Each file carries a SHA-256
of its bytes (``okd.engine.integrity``), checked before anything of it is used, so a file damaged
later (a bad disk, a truncated copy) is refused, never trained on or evaluated silently. Loaded
with ``weights_only=True``: they hold only tensors and plain Python data.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from okd.engine.integrity import DamagedCheckpoint, seal, verify
from okd.errors import OKDUserError

FORMAT = "okd-checkpoint-v1"

# What `okd eval`/export read from a checkpoint, what --resume reads too, and what may be absent.
REQUIRED = {"config": dict, "model": dict, "epoch": int}
RESUME_REQUIRED = {"optimizer": dict, "step": int}
OPTIONAL = {"partial": (dict, type(None)), "best": dict, "metrics_records": int, "data_fingerprint": (dict, type(None))}


TEMP_SUFFIX = ".tmp"


_RANDOM_PART = 8  # the characters tempfile.mkstemp puts between prefix and suffix


def temp_prefix(name: str, folder: Path | None = None) -> str:
    """Temp files of an atomic write of ``name`` are ``.{name}.XXXXXXXX.tmp`` in the same folder.

    With ``folder``, ``name`` is shortened where needed so the temp name fits the file system's
    name limit (NAME_MAX bytes): any name valid there must be writable, however long.
    """
    limit = _name_max(folder) - _RANDOM_PART - len(TEMP_SUFFIX) - 2 if folder is not None else None
    raw = os.fsencode(name)
    if limit is not None and len(raw) > limit:
        name = os.fsdecode(raw[:limit])
    return f".{name}."


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, keep_as: Path | None = None) -> None:
    """Replace ``path`` with ``data`` so that readers only ever see the old or the new content.

    ``keep_as``: after the new content is on disk, the old ``path`` becomes this file (see save_checkpoint).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name, path.parent), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if keep_as is not None and path.exists():
            _link_atomically(path, Path(keep_as))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def _link_atomically(source: Path, target: Path) -> None:
    """Make ``target`` another name of ``source`` (the old one, if any, stays until the switch)."""
    link = target.with_name(f"{temp_prefix(target.name, target.parent)}previous{TEMP_SUFFIX}")
    link.unlink(missing_ok=True)
    try:
        os.link(source, link)
    except OSError as exc:  # a file system without hard links (some network/FUSE mounts): a synced copy
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV):
            raise
        try:
            shutil.copyfile(source, link)
            with open(link, "rb+") as handle:
                os.fsync(handle.fileno())
        except BaseException:
            link.unlink(missing_ok=True)
            raise
    try:
        os.replace(link, target)
    finally:  # rename() of two names of one file (a save killed before its switch) does nothing: drop ours
        link.unlink(missing_ok=True)


def save_checkpoint(path: Path, state: dict[str, Any], previous: Path | None = None) -> None:
    """Serialise and seal in memory first (a failure leaves the old file untouched), then write atomically.

    With ``previous``, the file being replaced is kept under that name (a hard link, so no copy),
    once the new one is fully written: if ``path`` is ever damaged, there is an intact checkpoint to
    continue from. At every moment ``path`` exists, and ``previous`` is never newer than it.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    existed = path.exists()
    try:
        atomic_write_bytes(path, seal(buffer.getvalue()), keep_as=previous)
    except OSError as exc:
        kept = "the previous checkpoint is intact" if existed else "nothing of it was written"
        raise OKDUserError(f"could not write checkpoint {path}: {exc.strerror or exc} ({kept}); "
                           f"{retry_advice(exc, path.parent / 'last.pt')}") from None


def retry_advice(exc: OSError, last: Path) -> str:
    """What makes the same run work again after a failed write: the fix, then --resume where a
    checkpoint exists to continue from, else the same command (a run without one is replaced)."""
    fix = "free space on its disk" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "make the folder writable"
    how = "continue with --resume" if last.exists() else "rerun the same command"
    return f"{fix}, then {how}"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, for_resume: bool = False) -> dict[str, Any]:
    """Load an okd checkpoint safely; every failure becomes one clear OKDUserError.

    ``for_resume`` also requires what continuing a run needs (optimizer state, step).
    """
    path = Path(path)
    if not path.is_file():
        raise OKDUserError(f"checkpoint {path} does not exist")
    try:
        data = path.read_bytes()  # read once: what is verified is what is loaded
    except OSError as exc:
        raise OKDUserError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise DamagedCheckpoint(f"checkpoint {path} is corrupt or not a PyTorch checkpoint (expected a file written by `okd train`)")
    verify(path, data)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise OKDUserError(
            f"refusing to load {path}: it holds objects other than tensors and plain data{what}, which could run code"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DamagedCheckpoint(f"checkpoint {path} is corrupt or not a PyTorch checkpoint: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise OKDUserError(f"{path} is not an okd checkpoint (expected a file written by `okd train`)")
    check_structure(path, state, for_resume)
    return state


def check_structure(path: Path, state: dict[str, Any], for_resume: bool = False) -> None:
    """Refuse a checkpoint that loads but lacks what eval/--resume read (not a KeyError later)."""
    required = {**REQUIRED, **RESUME_REQUIRED} if for_resume else REQUIRED
    problems = []
    for key, kind in {**RESUME_REQUIRED, **OPTIONAL, **required}.items():
        if key not in state:
            if key in required:
                problems.append(f"no '{key}'")
        elif not isinstance(state[key], kind) or (kind is int and (isinstance(state[key], bool) or state[key] < 0)):
            problems.append(f"'{key}' is {_describe(state[key])}")
    if not problems and not all(isinstance(v, torch.Tensor) for v in state["model"].values()):
        problems.append("'model' holds entries that are not tensors")
    partial = state.get("partial")
    if not problems and partial is not None:
        terms = partial.get("terms")
        if (not isinstance(terms, dict) or not all(isinstance(v, torch.Tensor) for v in terms.values())
                or not all(isinstance(partial.get(k), (int, float)) for k in ("steps", "images", "seconds"))):
            problems.append("'partial' (the mid-epoch loss sums) is malformed")
    if problems:
        raise OKDUserError(f"checkpoint {path} is malformed ({'; '.join(problems)}); expected a file written by `okd train`")


def _describe(value: Any) -> str:
    """A value's type, and the value itself when it is a short scalar (never a tensor's repr)."""
    if isinstance(value, (bool, int, float, str, type(None))):
        text = repr(value)
        return f"{type(value).__name__} {text[:40] + '…' if len(text) > 40 else text}"
    return f"a {type(value).__name__}"


def state_dict_mismatch(exc: Exception, limit: int = 2) -> str:
    """The lines of a load_state_dict error that name the keys, shortened (the first line names none)."""
    lines = [line.strip() for line in str(exc).splitlines()]
    details = [re.sub(r"torch\.Size\((\[[^\]]*\])\)", r"\1", line) for line in lines[1:] if line]
    if not details:
        return lines[0][:300] if lines else type(exc).__name__
    shown = [d if len(d) <= 240 else d[:240] + "…" for d in details[:limit]]
    more = f" (+{len(details) - limit} more)" if len(details) > limit else ""
    return "; ".join(shown) + more
