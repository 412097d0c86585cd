"""CIFAR-100 from the official python release, read straight from the archive or its folder.

``data_dir`` may be the archive ``cifar-100-python.tar.gz``, the unpacked ``cifar-100-python/``
folder, or a folder holding either (the unpacked folder wins when both are complete). The
pickles go through a restricted unpickler (safe_pickle.py) and every problem becomes one
OKDUserError line naming the file and what was expected.
"""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from okd.data.safe_pickle import safe_loads
from okd.errors import OKDUserError

ARCHIVE = "cifar-100-python.tar.gz"
FOLDER = "cifar-100-python"
MEMBERS = ("train", "test", "meta")
URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
MD5 = "eb9058c3a382ffc7106e4002c42a8d85"  # published checksum of the archive
EXPECTED = f"expected {ARCHIVE} or {FOLDER}/{{train,test,meta}} (the official python release)"

CifarArrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def load_cifar100(data_dir: str | Path, download: bool = False) -> CifarArrays:
    """(train images, train labels, test images, test labels): uint8 [N, 3, 32, 32] / int64, CPU."""
    root = Path(data_dir).expanduser()
    source = find_cifar100(root)
    if source is None and download:
        fetch_cifar100(root)
        source = find_cifar100(root)
    if source is None:
        raise OKDUserError(f"no CIFAR-100 found at {root}: {EXPECTED}; pass --download to fetch it")
    raw = read_members(source)
    meta = _as_dict(raw["meta"], _where(source, "meta"))
    names = meta.get("fine_label_names")
    if not isinstance(names, list) or len(names) != 100:
        raise OKDUserError(f"{_where(source, 'meta')} is not CIFAR-100 metadata: expected 'fine_label_names' listing 100 classes")
    train_x, train_y = _images_and_labels(raw["train"], _where(source, "train"))
    test_x, test_y = _images_and_labels(raw["test"], _where(source, "test"))
    return train_x, train_y, test_x, test_y


def find_cifar100(root: Path) -> Path | None:
    """The unpacked folder or the archive that ``root`` designates, or None if there is neither."""
    if root.is_file():
        return root
    if root.is_dir():
        candidates = [root, root / FOLDER]
        for folder in candidates:
            if all((folder / member).is_file() for member in MEMBERS):
                return folder
        if (root / ARCHIVE).is_file():
            return root / ARCHIVE
        for folder in candidates:
            if any((folder / member).exists() for member in MEMBERS):
                missing = [m for m in MEMBERS if not (folder / m).is_file()]
                raise OKDUserError(f"incomplete CIFAR-100 folder {folder}: missing {', '.join(missing)}; {EXPECTED}")
    return None


def read_members(source: Path) -> dict[str, Any]:
    """Unpickle train/test/meta from a folder, or from the archive without extracting it."""
    if source.is_dir():
        out = {}
        for member in MEMBERS:
            path = source / member
            try:
                out[member] = safe_loads(path.read_bytes())
            except Exception as exc:  # any failure of an untrusted file is the user's to fix
                raise OKDUserError(f"cannot read CIFAR-100 file {path}: {_reason(exc)}; {EXPECTED}") from None
        return out
    try:
        with tarfile.open(source, "r:*") as archive:
            blobs = {}
            for member in MEMBERS:
                try:
                    handle = archive.extractfile(f"{FOLDER}/{member}")
                except KeyError:
                    handle = None
                if handle is None:
                    raise OKDUserError(f"{source} has no {FOLDER}/{member}: {EXPECTED}")
                blobs[member] = handle.read()
    except OKDUserError:
        raise
    except Exception as exc:
        raise OKDUserError(f"cannot read CIFAR-100 archive {source}: {_reason(exc)}; {EXPECTED}") from None
    out = {}
    for member, blob in blobs.items():
        try:
            out[member] = safe_loads(blob)
        except Exception as exc:
            raise OKDUserError(f"cannot read CIFAR-100 file {_where(source, member)}: {_reason(exc)}; {EXPECTED}") from None
    return out


def fetch_cifar100(root: Path) -> None:
    """Download and unpack the official archive into ``root``; torchvision verifies its MD5."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(URL, download_root=str(root), filename=ARCHIVE, md5=MD5)
    except Exception as exc:
        raise OKDUserError(f"could not download CIFAR-100 from {URL} into {root}: {_reason(exc)}") from None


def _where(source: Path, member: str) -> str:
    """How to name a member in messages: a path in a folder, ``archive:folder/member`` in an archive."""
    return str(source / member) if source.is_dir() else f"{source}:{FOLDER}/{member}"


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _as_dict(obj: Any, where: str) -> dict[str, Any]:
    """Pickles from Python 2 (latin-1) or written with bytes keys: normalise keys to str."""
    if not isinstance(obj, dict):
        raise OKDUserError(f"{where} is not a CIFAR-100 pickle: expected a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _images_and_labels(obj: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    entry = _as_dict(obj, where)
    data, labels = entry.get("data"), entry.get("fine_labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        found = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise OKDUserError(f"{where} is not a CIFAR-100 pickle: expected 'data' uint8 [N, 3072], found {found}")
    try:
        targets = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError):
        targets = torch.empty(0)
    if targets.shape != (data.shape[0],) or (targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < 100):
        raise OKDUserError(f"{where} is not a CIFAR-100 pickle: expected 'fine_labels' with {data.shape[0]} labels in 0..99")
    if not (data.flags.c_contiguous and data.flags.writeable):  # e.g. a view of the pickle's bytes
        data = np.array(data, order="C")
    return torch.from_numpy(data).view(-1, 3, 32, 32), targets
