"""A cheap fingerprint of a dataset, saved with every run, so ``--resume`` trains on the same data.

A resumed run replays the exact sample order of the run it continues; on other data (a re-extracted
archive with a missing class, a folder that gained images, a different CIFAR) it would silently
train on something else. The fingerprint holds what is cheap to recompute at every start: the
number and shape of the images, the label counts, and a SHA-256 of a fixed sample of the data
(image bytes for the in-memory datasets; relative file names and sizes for image folders). Paths
are stored relative to the data root, so ``--data`` may move; the data may not change.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from okd.errors import OKDUserError

SAMPLE = 64  # images (in-memory) hashed per split
FILE_SAMPLE = 256  # files (folders) whose sizes are hashed per split


def _spread(n: int, k: int) -> list[int]:
    """``k`` positions spread evenly over ``range(n)`` (all of them when n <= k)."""
    return list(range(n)) if n <= k else [i * n // k for i in range(k)]


def tensor_fingerprint(arrays: Sequence[torch.Tensor], num_classes: int) -> dict[str, Any]:
    """Fingerprint of uint8 (train images, train labels, test images, test labels) tensors."""
    train_x, train_y, test_x, test_y = arrays
    found: dict[str, Any] = {}
    for split, images, labels in (("train", train_x, train_y), ("test", test_x, test_y)):
        digest = hashlib.sha256(labels.to(torch.int64).cpu().numpy().tobytes())
        digest.update(images[_spread(images.shape[0], SAMPLE)].contiguous().cpu().numpy().tobytes())
        found[f"{split} images"] = list(images.shape)
        found[f"{split} label counts"] = torch.bincount(labels.to(torch.int64).cpu(), minlength=num_classes).tolist()
        found[f"{split} sample sha256"] = digest.hexdigest()[:32]
    return found


def files_fingerprint(root: Path, splits: dict[str, Sequence[tuple[str, int]]], num_classes: int) -> dict[str, Any]:
    """Fingerprint of image folders: per split, the label counts, and a SHA-256 of every file's path
    (relative to ``root``) and label plus the sizes of a fixed sample of the files."""
    found: dict[str, Any] = {}
    for split, samples in splits.items():
        digest = hashlib.sha256()
        counts = [0] * num_classes
        for path, label in samples:
            counts[label] += 1
            digest.update(f"{os.path.relpath(path, root)}\t{label}\n".encode())
        for i in _spread(len(samples), FILE_SAMPLE):
            try:
                size = os.stat(samples[i][0]).st_size
            except OSError:
                size = -1  # unreadable now: the decoder names it when it gets there
            digest.update(f"{size}\n".encode())
        found[f"{split} images"] = [len(samples)]
        found[f"{split} label counts"] = counts
        found[f"{split} sample sha256"] = digest.hexdigest()[:32]
    return found


def check_same_data(saved: Any, now: dict[str, Any], where: str) -> None:
    """--resume: refuse when the data's fingerprint differs from the run's, naming what changed.

    Runs saved before fingerprints existed (``saved`` None) are not checked.
    """
    if not isinstance(saved, dict):
        return
    changed = []
    for key in sorted(set(saved) | set(now)):
        then, current = saved.get(key), now.get(key)
        if then == current:
            continue
        if key.endswith("label counts") and isinstance(then, list) and isinstance(current, list) and len(then) == len(current):
            moved = [i for i, (a, b) in enumerate(zip(then, current)) if a != b]
            changed.append(f"{key} of class {moved[0]}: {then[moved[0]]} then, {current[moved[0]]} now"
                           + (f" (+{len(moved) - 1} more classes)" if len(moved) > 1 else ""))
        elif key.endswith("sha256"):
            changed.append(f"{key.replace(' sha256', '')} contents differ")
        else:
            changed.append(f"{key}: {then} then, {current} now")
    if changed:
        raise OKDUserError(f"--resume: the data in {where} is not the data the run began with ({'; '.join(changed[:3])}); "
                           "--data may move, the data may not change: restore it, or start a new run in another --out folder")
