"""Checkpoints that survive crashes and never execute code.

Saved atomically (temp file in the same folder, fsync, rename, fsync of the folder), so a
``kill -9`` at any moment leaves either the previous or the new file. Loaded with
``weights_only=True``: they hold only tensors and plain Python data.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from okd.errors import OKDUserError

FORMAT = "okd-checkpoint-v1"

# What `okd eval`/export read from a checkpoint, what --resume reads too, and what may be absent.
REQUIRED = {"config": dict, "model": dict, "epoch": int}
RESUME_REQUIRED = {"optimizer": dict, "step": int}
OPTIONAL = {"partial": (dict, type(None)), "best": dict, "metrics_records": int}


TEMP_SUFFIX = ".tmp"


def temp_prefix(name: str) -> str:
    """Temp files of an atomic write of ``name`` are ``.{name}.XXXXXXXX.tmp`` in the same folder."""
    return f".{name}."


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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that readers only ever see the old or the new content."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path.name), suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise in memory first (a failure leaves the old file untouched), then write atomically."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    try:
        atomic_write_bytes(Path(path), buffer.getvalue())
    except OSError as exc:
        raise OKDUserError(f"could not write checkpoint {path}: {exc.strerror or exc} (the previous checkpoint is intact)") from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", *, for_resume: bool = False) -> dict[str, Any]:
    """Load an okd checkpoint safely; every failure becomes one clear OKDUserError.

    ``for_resume`` also requires what continuing a run needs (optimizer state, step).
    """
    path = Path(path)
    if not path.is_file():
        raise OKDUserError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        raise OKDUserError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint (expected a file written by `okd train`)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise OKDUserError(
            f"refusing to load {path}: it holds objects other than tensors and plain data{what}, which could run code"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise OKDUserError(f"checkpoint {path} is corrupt or not a PyTorch checkpoint: {str(exc).splitlines()[0][:200]}") from None
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
