"""Which dataset a ``--data PATH`` holds, for runs that give ``--data`` without ``--dataset``.

Without this, a path given alone trained on the embedded digits and ignored the user's data. The
layout decides: a CIFAR-10/100 archive or folder; ImageNet's train/ of 1000 WordNet-id folders; any
other folder with train/ is an image folder; MNIST-style IDX files name their dataset by the folder
they sit in (the three releases use the same file names). Anything else is refused with one line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from okd.data.cifar import CIFAR10, CIFAR100, CifarRelease
from okd.errors import OKDUserError

IDX_FILE = re.compile(r"^(train|t10k)-(images|labels)-idx[13]-ubyte(\.gz)?$")
IDX_DATASETS = ("fashion-mnist", "kmnist", "mnist")  # longest first: "fashion-mnist" also contains "mnist"
WORDNET_ID = re.compile(r"^n\d{8}$")
IMAGENET_CLASSES = 1000


def _is_cifar(release: CifarRelease, path: Path) -> bool:
    if path.is_file():
        return path.name == release.archive
    folders = (path, path / release.folder)
    return (path / release.archive).is_file() or any(all((f / m).is_file() for m in release.members) for f in folders)


def _idx_files(path: Path) -> list[str]:
    if not path.is_dir():
        return [path.name] if IDX_FILE.match(path.name) else []
    return sorted(p.name for p in path.iterdir() if IDX_FILE.match(p.name))


def _idx_dataset(path: Path, known: Iterable[str]) -> str:
    """The IDX dataset the folder's name points to (``.../fashion-mnist/``), if okd knows it."""
    known = [name for name in IDX_DATASETS if name in known]
    folder = (path if path.is_dir() else path.parent).resolve().name.lower().replace("_", "-")
    for name in known:
        if name in folder or name.replace("-", "") in folder:
            return name
    if not known:
        raise OKDUserError(f"--data {path} holds MNIST-style IDX files, which this version of okd does not read; "
                           "write them as an image folder (train/<class>/, val/<class>/) and pass --dataset folder")
    raise OKDUserError(f"--data {path} holds MNIST-style IDX files of an unnamed release; say which with --dataset {' | '.join(known)}")


def _is_imagenet(train: Path) -> bool:
    classes = [p.name for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return len(classes) == IMAGENET_CLASSES and all(WORDNET_ID.match(name) for name in classes)


def infer_dataset(data: str | Path, known: Iterable[str], download: bool = False) -> str:
    """The dataset name for ``--data data``; raises OKDUserError naming what was expected."""
    path = Path(data).expanduser()
    if download and not any(_is_cifar(release, path) for release in (CIFAR100, CIFAR10)):
        raise OKDUserError("--download needs --dataset cifar100 or --dataset cifar10 (what to fetch into --data)")
    if not path.exists():
        raise OKDUserError(f"--data {data} does not exist; pass the folder or archive that holds your data")
    known = tuple(known)
    for name, release in (("cifar100", CIFAR100), ("cifar10", CIFAR10)):
        if _is_cifar(release, path):
            return name
    if path.is_dir() and (path / "train").is_dir():
        return "imagenet" if _is_imagenet(path / "train") else "folder"
    if _idx_files(path):
        return _idx_dataset(path, known)
    raise OKDUserError(
        f"cannot tell which dataset --data {data} holds (expected an image folder with train/<class>/, a CIFAR-10/100 "
        "python release, or MNIST-style IDX files); pass --dataset " + " | ".join(known)
    )
