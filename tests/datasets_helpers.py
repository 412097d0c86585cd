"""Tiny datasets in the official on-disk formats, for the data tests.

CIFAR-100 is written the way the official python release is: Python 2 protocol-2 pickles (str
keys and values as 8-bit strings, numpy arrays reduced through ``numpy.core.multiarray``), so
the reader is tested against the real format and not against what Python 3 would write.
"""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

FOLDER = "cifar-100-python"


# -- a minimal Python 2 pickler (protocol 2), enough for the CIFAR dicts ---------------------------
def _py2_str(value: bytes) -> bytes:
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(value)) + value  # BINSTRING


def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def _py2_obj(value) -> bytes:
    if isinstance(value, bool):
        return b"\x88" if value else b"\x89"
    if isinstance(value, int):
        return _py2_int(value)
    if isinstance(value, str):
        return _py2_str(value.encode("latin1"))
    if isinstance(value, bytes):
        return _py2_str(value)
    if value is None:
        return b"N"
    if isinstance(value, tuple):
        return b"(" + b"".join(_py2_obj(v) for v in value) + b"t"
    if isinstance(value, list):
        return b"](" + b"".join(_py2_obj(v) for v in value) + b"e"
    if isinstance(value, dict):
        return b"}(" + b"".join(_py2_obj(k) + _py2_obj(v) for k, v in value.items()) + b"u"
    if isinstance(value, np.ndarray):  # what numpy under Python 2 writes for a C-ordered array
        dtype = b"cnumpy\ndtype\n" + _py2_obj((value.dtype.str[1:], 0, 1)) + b"R" + _py2_obj((3, "|", None, None, None, -1, -1, 0)) + b"b"
        state = b"(" + _py2_int(1) + _py2_obj(tuple(value.shape)) + dtype + b"\x89" + _py2_str(value.tobytes()) + b"t"
        args = b"(" + b"cnumpy\nndarray\n" + _py2_obj((0,)) + _py2_str(b"b") + b"t"
        return b"cnumpy.core.multiarray\n_reconstruct\n" + args + b"R" + state + b"b"
    raise TypeError(type(value))


def py2_pickle(value) -> bytes:
    """Bytes a Python 2 ``cPickle.dump(value, f, 2)`` would produce (for dicts/lists/str/int/uint8 arrays)."""
    return b"\x80\x02" + _py2_obj(value) + b"."


# -- CIFAR-100 ----------------------------------------------------------------------------------
def cifar_split(n: int, seed: int, name: str) -> dict:
    rng = np.random.RandomState(seed)
    fine = rng.randint(0, 100, size=n)
    return {
        "filenames": [f"{name}_{i:05d}.png" for i in range(n)],
        "batch_label": f"{name} batch 1 of 1",
        "fine_labels": [int(v) for v in fine],
        "coarse_labels": [int(v) // 5 for v in fine],
        "data": rng.randint(0, 256, size=(n, 3072)).astype(np.uint8),
    }


def write_release(root: Path, folder_name: str, archive_name: str, members: dict[str, bytes], archive: bool,
                  folder: bool) -> Path:
    """Lay ``members`` out as an official CIFAR release: its unpacked folder and/or its ``.tar.gz``.

    Returns the folder, or the archive when only the archive was written.
    """
    target = root / folder_name
    if folder:
        target.mkdir(exist_ok=True)
        for name, blob in members.items():
            (target / name).write_bytes(blob)
    if archive:
        path = root / archive_name
        with tarfile.open(path, "w:gz") as tar:
            for name, blob in members.items():
                info = tarfile.TarInfo(f"{folder_name}/{name}")
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        if not folder:
            return path
    return target


def write_cifar100(root: Path, n_train: int = 40, n_test: int = 24, archive: bool = False, folder: bool = True, seed: int = 0) -> Path:
    """Write ``root/cifar-100-python/{train,test,meta}`` (and/or the .tar.gz); return what was written.

    Returns the folder, or the archive when ``folder`` is False.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    members = {
        "train": py2_pickle(cifar_split(n_train, seed, "training")),
        "test": py2_pickle(cifar_split(n_test, seed + 1, "testing")),
        "meta": py2_pickle({"fine_label_names": [f"fine{i}" for i in range(100)], "coarse_label_names": [f"coarse{i}" for i in range(20)]}),
    }
    return write_release(root, FOLDER, f"{FOLDER}.tar.gz", members, archive, folder)


def cifar_expected(n_train: int = 40, n_test: int = 24, seed: int = 0) -> tuple[np.ndarray, list, np.ndarray, list]:
    """The arrays ``write_cifar100`` stores (train data, train labels, test data, test labels)."""
    train, test = cifar_split(n_train, seed, "training"), cifar_split(n_test, seed + 1, "testing")
    return train["data"], train["fine_labels"], test["data"], test["fine_labels"]


def python3_pickle(value, protocol: int = pickle.HIGHEST_PROTOCOL) -> bytes:
    return pickle.dumps(value, protocol=protocol)


# -- ImageNet-style folders -------------------------------------------------------------------------
def write_imagenet_tree(root: Path, classes: int = 3, per_class: int = 4, size: int = 40, val_per_class: int | None = None) -> Path:
    """Write ``root/{train,val}/nXXXXXXXX/*.JPEG`` with real (random, class-tinted) JPEGs; return root."""
    from PIL import Image

    root = Path(root)
    rng = np.random.RandomState(0)
    counts = {"train": per_class, "val": per_class if val_per_class is None else val_per_class}
    for split, count in counts.items():
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                height, width = size + int(rng.randint(0, size // 2 + 1)), size + int(rng.randint(0, size // 2 + 1))
                pixels = rng.randint(0, 256, size=(height, width, 3)).astype(np.uint8)
                pixels[..., c % 3] = 255 - 40 * (c // 3)
                Image.fromarray(pixels).save(folder / f"{split}_{c}_{i}.JPEG", quality=90)
    return root


# -- CIFAR-10 -------------------------------------------------------------------------------------
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar10_batch(n: int, seed: int, name: str) -> dict:
    rng = np.random.RandomState(seed)
    return {
        "batch_label": f"{name} batch",
        "labels": [int(v) for v in rng.randint(0, 10, size=n)],
        "data": rng.randint(0, 256, size=(n, 3072)).astype(np.uint8),
        "filenames": [f"{name}_{i:05d}.png" for i in range(n)],
    }


def write_cifar10(root: Path, per_batch: int = 6, n_test: int = 10, archive: bool = False, folder: bool = True) -> Path:
    """``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` (and/or the .tar.gz), Python 2 pickles."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    members = {f"data_batch_{i}": py2_pickle(cifar10_batch(per_batch, i, f"training {i}")) for i in range(1, 6)}
    members["test_batch"] = py2_pickle(cifar10_batch(n_test, 0, "testing"))
    members["batches.meta"] = py2_pickle({"label_names": CIFAR10_NAMES, "num_cases_per_batch": per_batch, "num_vis": 3072})
    return write_release(root, CIFAR10_FOLDER, "cifar-10-python.tar.gz", members, archive, folder)


def cifar10_expected(per_batch: int = 6, n_test: int = 10) -> tuple[np.ndarray, list, np.ndarray, list]:
    """What ``write_cifar10`` stores: the five training batches concatenated in order, then the test batch."""
    batches = [cifar10_batch(per_batch, i, f"training {i}") for i in range(1, 6)]
    test = cifar10_batch(n_test, 0, "testing")
    return np.concatenate([b["data"] for b in batches]), sum((b["labels"] for b in batches), []), test["data"], test["labels"]


# -- IDX (MNIST / Fashion-MNIST / KMNIST) ----------------------------------------------------------

IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_bytes(array: np.ndarray) -> bytes:
    """An uint8 array as the IDX format stores it: magic 0x0000080<ndim>, big-endian dims, raw bytes."""
    header = struct.pack(">I", 0x0800 | array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def idx_arrays(n_train: int = 40, n_test: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random 28x28 grey images and labels 0..9 (every class present in both splits)."""
    rng = np.random.RandomState(seed)
    images = lambda n: rng.randint(0, 256, size=(n, 28, 28)).astype(np.uint8)  # noqa: E731
    labels = lambda n: (np.arange(n) % 10)[rng.permutation(n)].astype(np.uint8)  # noqa: E731
    return images(n_train), labels(n_train), images(n_test), labels(n_test)


def write_idx_release(root: Path, gz: bool = True, arrays=None) -> Path:
    """The four official IDX files of ``arrays`` (default ``idx_arrays()``) in ``root``, .gz or raw."""
    import gzip

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stem, array in zip(IDX_STEMS, arrays if arrays is not None else idx_arrays()):
        blob = idx_bytes(array)
        (root / (stem + ".gz" if gz else stem)).write_bytes(gzip.compress(blob) if gz else blob)
    return root
