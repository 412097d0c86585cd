"""Fashion-MNIST, MNIST and KMNIST from their official IDX files, shaped like CIFAR.

All three ship as four IDX files (``{train,t10k}-{images-idx3,labels-idx1}-ubyte``, ``.gz`` or
not): 28x28 grey images, 10 classes, 60,000 train / 10,000 test. Each image is padded with two
zero pixels on every side to 32x32 (the background of all three is 0, so this adds no new
content and resamples nothing) and repeated over three channels, so every CIFAR backbone runs on
it unchanged and the images go through the same in-memory crop/flip/normalise path as CIFAR.

Fashion-MNIST's default folder is the one Debian's ``dataset-fashion-mnist`` package installs.
Every problem with a file (wrong magic, short file, image/label counts that disagree, a label out
of range, a corrupt gzip stream, a download whose checksum differs) is one OKDUserError naming it.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from okd.errors import OKDUserError

IdxArrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
SPLITS = ("train", "t10k")
IMAGE_MAGIC, LABEL_MAGIC = 0x0803, 0x0801  # unsigned bytes, 3 dims / 1 dim
SIDE, PADDED = 28, 32


@dataclass(frozen=True)
class IdxDataset:
    """One IDX release: where it lives, how it is checked, and how okd trains on it by default."""

    name: str  # the --dataset value
    title: str  # as messages name it
    class_names: tuple[str, ...]
    mean: float  # of the training pixels in [0, 1] over the 28x28 images, as the literature normalises
    std: float
    flip: bool  # mirror augmentation: clothes are left/right symmetric, digits and characters are not
    mirror: str  # base URL of the official files
    md5: dict[str, str]  # published checksum of each .gz file
    folder: str  # sub-folder of --data that may hold the files
    default_dir: str | None = None  # where a system package installs it
    install_hint: str = ""
    # Defaults the engine recipe takes when the user sets none (see recipe_for):
    recipe: dict[str, float | int] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def pad(self) -> int:
        """Random-crop padding: CIFAR's 4 pixels on the 32x32 padded image."""
        return 4


def _md5s(*values: str) -> dict[str, str]:
    return dict(zip([f"{s}-{k}-ubyte.gz" for s in SPLITS for k in ("images-idx3", "labels-idx1")], values))


# 100 epochs, batch 128, lr 0.1 (cosine), wd 5e-4: CIFAR's step and regularisation on a set that
# converges in a third of CIFAR's 300 epochs.
IDX_RECIPE: dict[str, float | int] = {"epochs": 100, "batch_size": 128, "lr": 0.1, "wd": 5e-4}

FASHION_MNIST = IdxDataset(
    "fashion-mnist", "Fashion-MNIST",
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    0.2860, 0.3530, True, "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    _md5s("8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
          "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"),
    "fashion-mnist", "/usr/share/datasets/fashion-mnist",
    "install Debian's package (apt-get install dataset-fashion-mnist)", IDX_RECIPE,
)
MNIST = IdxDataset(
    "mnist", "MNIST", tuple(str(d) for d in range(10)), 0.1307, 0.3081, False,
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    _md5s("f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
          "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"),
    "mnist", recipe=IDX_RECIPE,
)
KMNIST = IdxDataset(
    "kmnist", "KMNIST", ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"), 0.1918, 0.3483, False,
    "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    _md5s("bdb82020997e1d708af4cf47b453dcf7", "e144d726b3acfaa3e44228e80efcd344",
          "5c965bf0a639b31b8f53240b1b52f4d7", "7320c461ea6c1c855c0b718fb2a4b134"),
    "kmnist", recipe=IDX_RECIPE,
)
IDX_DATASETS: dict[str, IdxDataset] = {d.name: d for d in (FASHION_MNIST, MNIST, KMNIST)}


def recipe_for(dataset: str) -> dict[str, float | int] | None:
    """The engine recipe's optimisation defaults for an IDX dataset, or None for any other."""
    spec = IDX_DATASETS.get(dataset)
    return dict(spec.recipe) if spec is not None else None


def load_idx(dataset: IdxDataset, data_dir: str | Path | None, download: bool = False) -> IdxArrays:
    """(train images, train labels, test images, test labels): uint8 [N, 3, 32, 32] / int64, CPU."""
    root = _root(dataset, data_dir, download)
    folder = find_files(dataset, root)
    if folder is None and download:
        fetch(dataset, root)
        folder = find_files(dataset, root)
    if folder is None:
        hint = f"{dataset.install_hint}, or " if dataset.install_hint and data_dir is None else ""
        raise OKDUserError(
            f"no {dataset.title} found at {root}: expected {', '.join(dataset.md5)} (or the same without .gz); "
            f"{hint}pass --data DIR holding them, or --download to fetch them into {root}"
        )
    out: list[torch.Tensor] = []
    for split in SPLITS:
        image_path, label_path = _file(folder, f"{split}-images-idx3-ubyte"), _file(folder, f"{split}-labels-idx1-ubyte")
        images = read_idx(image_path, IMAGE_MAGIC, (SIDE, SIDE))
        labels = read_idx(label_path, LABEL_MAGIC, ())
        if len(images) != len(labels):
            raise OKDUserError(f"{label_path} holds {len(labels)} labels but {image_path} holds {len(images)} images; the files do not belong together")
        if labels.size and int(labels.max()) >= dataset.num_classes:
            raise OKDUserError(f"{label_path} has label {int(labels.max())}; {dataset.title} labels are 0..{dataset.num_classes - 1}")
        out += [to_cifar_shape(images), torch.from_numpy(labels.astype(np.int64))]
    return out[0], out[1], out[2], out[3]


def to_cifar_shape(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 28, 28] -> [N, 3, 32, 32]: two zero pixels each side, grey repeated over 3 channels."""
    pad = (PADDED - SIDE) // 2
    grey = torch.nn.functional.pad(torch.from_numpy(images), (pad, pad, pad, pad))
    return grey[:, None].expand(-1, 3, -1, -1).contiguous()


def read_idx(path: Path, magic: int, item_shape: tuple[int, ...]) -> np.ndarray:
    """Decode one uint8 IDX file (gzip or raw), checking magic, item shape and length."""
    try:
        blob = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise OKDUserError(f"cannot read IDX file {path}: {type(exc).__name__}: {exc}") from None
    dims = magic & 0xFF
    header = 4 + 4 * dims
    if len(blob) < header or int.from_bytes(blob[:4], "big") != magic:
        found = blob[:4].hex() if len(blob) >= 4 else f"{len(blob)} bytes"
        raise OKDUserError(f"{path} is not an IDX file of {dims}-d unsigned bytes: expected magic {magic:08x}, found {found}")
    shape = tuple(int.from_bytes(blob[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    if shape[1:] != item_shape:
        raise OKDUserError(f"{path} holds items of shape {list(shape[1:])}, expected {list(item_shape)}")
    expected = header + int(np.prod(shape))
    if len(blob) != expected:
        what = "truncated" if len(blob) < expected else "longer than its header says"
        raise OKDUserError(f"{path} is {what}: {len(blob)} bytes, its header ({shape[0]} items) needs {expected}; fetch it again")
    return np.frombuffer(blob, np.uint8, offset=header).reshape(shape).copy()  # writable, as torch wants


def find_files(dataset: IdxDataset, root: Path) -> Path | None:
    """The folder (``root`` or ``root/<folder>``) holding all four files, or None if neither has any."""
    for folder in (root, root / dataset.folder):
        present = [stem for stem in _stems() if _file(folder, stem).is_file()]
        if len(present) == len(_stems()):
            return folder
        if present:
            missing = [f"{stem}[.gz]" for stem in _stems() if stem not in present]
            raise OKDUserError(f"incomplete {dataset.title} folder {folder}: missing {', '.join(missing)}")
    return None


def fetch(dataset: IdxDataset, root: Path) -> None:
    """Download the four official .gz files into ``root``, each checked against its published MD5."""
    root.mkdir(parents=True, exist_ok=True)
    for filename, md5 in dataset.md5.items():
        url, target = dataset.mirror + filename, root / filename
        partial = target.with_name(filename + ".part")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
                shutil.copyfileobj(response, out)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise OKDUserError(f"could not download {dataset.title} from {url} into {root}: {type(exc).__name__}: {exc}") from None
        digest = hashlib.md5(partial.read_bytes()).hexdigest()
        if digest != md5:
            partial.unlink()
            raise OKDUserError(f"{url} has MD5 {digest}, the published {filename} has {md5}; not saved, try again later")
        partial.replace(target)


def _root(dataset: IdxDataset, data_dir: str | Path | None, download: bool) -> Path:
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if dataset.default_dir is not None and (Path(dataset.default_dir).is_dir() or not download):
        return Path(dataset.default_dir)
    return Path("./data") / dataset.folder


def _stems() -> list[str]:
    return [name.removesuffix(".gz") for name in _md5s("", "", "", "")]


def _file(folder: Path, stem: str) -> Path:
    """The uncompressed file if there is one (no decompression needed), else the .gz."""
    raw = folder / stem
    return raw if raw.is_file() else folder / f"{stem}.gz"
