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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load an okd checkpoint safely; every failure becomes one clear OKDUserError."""
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
    return state
