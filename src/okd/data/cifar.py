"""CIFAR-10 and CIFAR-100 from their official python releases, read straight from archive or folder.

``data_dir`` may be the archive (``cifar-100-python.tar.gz`` / ``cifar-10-python.tar.gz``), the
unpacked folder (``cifar-100-python/`` / ``cifar-10-batches-py/``), or a folder holding either (the
unpacked folder wins when both are complete). The two releases differ only in member names and
label keys, described by a CifarRelease; one reader serves both. The pickles go through a
restricted unpickler (safe_pickle.py) and every problem becomes one OKDUserError line naming the
file and what was expected.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from okd.data.safe_pickle import safe_loads
from okd.errors import OKDUserError

CifarArrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class CifarRelease:
    """Where one official release keeps its images, labels and class names."""

    title: str  # as messages name it
    archive: str
    folder: str  # the folder the archive unpacks to
    train_members: tuple[str, ...]  # concatenated in this order
    test_member: str
    meta_member: str
    label_key: str
    names_key: str
    num_classes: int
    url: str
    md5: str  # the published checksum of the archive

    @property
    def members(self) -> tuple[str, ...]:
        return (*self.train_members, self.test_member, self.meta_member)

    @property
    def expected(self) -> str:
        return f"expected {self.archive} or {self.folder}/{{{','.join(self.members)}}} (the official python release)"


CIFAR100 = CifarRelease(
    "CIFAR-100", "cifar-100-python.tar.gz", "cifar-100-python", ("train",), "test", "meta",
    "fine_labels", "fine_label_names", 100, "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    "eb9058c3a382ffc7106e4002c42a8d85",
)
CIFAR10 = CifarRelease(
    "CIFAR-10", "cifar-10-python.tar.gz", "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
    "batches.meta", "labels", "label_names", 10, "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "c58f30108f718f92721af3b95e74349a",
)
URL, MD5 = CIFAR100.url, CIFAR100.md5  # CIFAR-100's, as callers knew them


def load_cifar100(data_dir: str | Path, download: bool = False) -> CifarArrays:
    """(train images, train labels, test images, test labels): uint8 [N, 3, 32, 32] / int64, CPU."""
    return load_release(CIFAR100, data_dir, download)[0]


def load_cifar10(data_dir: str | Path, download: bool = False) -> CifarArrays:
    """As load_cifar100, for the CIFAR-10 release (five training batches, concatenated in order)."""
    return load_release(CIFAR10, data_dir, download)[0]


def load_release(release: CifarRelease, data_dir: str | Path, download: bool = False) -> tuple[CifarArrays, list[str]]:
    """The release's arrays and its class names (index order, from the metadata member)."""
    root = Path(data_dir).expanduser()
    source = find_release(release, root)
    if source is None and download:
        fetch_release(release, root)
        source = find_release(release, root)
    if source is None:
        raise OKDUserError(f"no {release.title} found at {root}: {release.expected}; pass --download to fetch it")
    raw = read_members(release, source)
    meta_where = _where(release, source, release.meta_member)
    meta = _as_dict(release, raw[release.meta_member], meta_where)
    names = meta.get(release.names_key)
    if not isinstance(names, list) or len(names) != release.num_classes or not all(isinstance(n, (str, bytes)) for n in names):
        raise OKDUserError(
            f"{meta_where} is not {release.title} metadata: expected '{release.names_key}' listing {release.num_classes} classes"
        )
    parts = [_images_and_labels(release, raw[m], _where(release, source, m)) for m in release.train_members]
    train_x = torch.cat([x for x, _ in parts]) if len(parts) > 1 else parts[0][0]
    train_y = torch.cat([y for _, y in parts]) if len(parts) > 1 else parts[0][1]
    test_x, test_y = _images_and_labels(release, raw[release.test_member], _where(release, source, release.test_member))
    class_names = [n.decode("latin1") if isinstance(n, bytes) else n for n in names]
    return (train_x, train_y, test_x, test_y), class_names


def find_release(release: CifarRelease, root: Path) -> Path | None:
    """The unpacked folder or the archive that ``root`` designates, or None if there is neither."""
    if root.is_file():
        return root
    if root.is_dir():
        candidates = [root, root / release.folder]
        for folder in candidates:
            if all((folder / member).is_file() for member in release.members):
                return folder
        if (root / release.archive).is_file():
            return root / release.archive
        for folder in candidates:
            if any((folder / member).exists() for member in release.members):
                missing = [m for m in release.members if not (folder / m).is_file()]
                raise OKDUserError(f"incomplete {release.title} folder {folder}: missing {', '.join(missing)}; {release.expected}")
    return None


def read_members(release: CifarRelease, source: Path) -> dict[str, Any]:
    """Unpickle every member from a folder, or from the archive without extracting it."""
    if source.is_dir():
        out = {}
        for member in release.members:
            path = source / member
            try:
                out[member] = safe_loads(path.read_bytes())
            except Exception as exc:  # any failure of an untrusted file is the user's to fix
                raise OKDUserError(f"cannot read {release.title} file {path}: {_reason(exc)}; {release.expected}") from None
        return out
    try:
        with tarfile.open(source, "r:*") as archive:
            blobs = {}
            for member in release.members:
                try:
                    handle = archive.extractfile(f"{release.folder}/{member}")
                except KeyError:
                    handle = None
                if handle is None:
                    raise OKDUserError(f"{source} has no {release.folder}/{member}: {release.expected}")
                blobs[member] = handle.read()
    except OKDUserError:
        raise
    except Exception as exc:
        raise OKDUserError(f"cannot read {release.title} archive {source}: {_reason(exc)}; {release.expected}") from None
    out = {}
    for member, blob in blobs.items():
        try:
            out[member] = safe_loads(blob)
        except Exception as exc:
            raise OKDUserError(
                f"cannot read {release.title} file {_where(release, source, member)}: {_reason(exc)}; {release.expected}"
            ) from None
    return out


def fetch_release(release: CifarRelease, root: Path) -> None:
    """Download and unpack the official archive into ``root``; torchvision verifies its MD5."""
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(release.url, download_root=str(root), filename=release.archive, md5=release.md5)
    except Exception as exc:
        raise OKDUserError(f"could not download {release.title} from {release.url} into {root}: {_reason(exc)}") from None


def _where(release: CifarRelease, source: Path, member: str) -> str:
    """How to name a member in messages: a path in a folder, ``archive:folder/member`` in an archive."""
    return str(source / member) if source.is_dir() else f"{source}:{release.folder}/{member}"


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _as_dict(release: CifarRelease, obj: Any, where: str) -> dict[str, Any]:
    """Pickles from Python 2 (latin-1) or written with bytes keys: normalise keys to str."""
    if not isinstance(obj, dict):
        raise OKDUserError(f"{where} is not a {release.title} pickle: expected a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _images_and_labels(release: CifarRelease, obj: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    entry = _as_dict(release, obj, where)
    data, labels = entry.get("data"), entry.get(release.label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        found = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise OKDUserError(f"{where} is not a {release.title} pickle: expected 'data' uint8 [N, 3072], found {found}")
    try:
        targets = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    except (TypeError, ValueError):
        targets = torch.empty(0)
    top = release.num_classes - 1
    if targets.shape != (data.shape[0],) or (targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) <= top):
        raise OKDUserError(
            f"{where} is not a {release.title} pickle: expected '{release.label_key}' with {data.shape[0]} labels in 0..{top}"
        )
    if not (data.flags.c_contiguous and data.flags.writeable):  # e.g. a view of the pickle's bytes
        data = np.array(data, order="C")
    return torch.from_numpy(data).view(-1, 3, 32, 32), targets
