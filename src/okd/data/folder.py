"""Any folder of images: ``<root>/train/<class>/*`` and ``<root>/val/<class>/*`` (or a seeded split).

Class names are the sorted sub-folders of train/; samples are ordered by class, then by path.
Small sets are decoded once (shorter side resized to S with antialiased bilinear, centre crop
S x S) into one uint8 tensor on the training device and go through the CIFAR loaders (batched
pad-S//8 crop + flip); larger ones stream through the ImageNet loaders (RandomResizedCrop(S) +
flip per sample) with the same eval transform, so evaluation never depends on which path ran.
Both normalise with ImageNet's mean/std (no pass over the data is needed, so a streamed set and
``okd eval`` of any checkpoint agree without stored statistics).

What a run must reproduce (class names, the validation split, the per-class file lists and the
storage choice) goes into a manifest the trainer saves with every checkpoint: ``--resume``
checks the folder still holds the same files, ``okd eval`` labels by the saved class names.
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader

from okd.data.augment import IMAGENET_MEAN, IMAGENET_STD, Normalizer
from okd.data.config import DataConfig, DataSpec, check_folder_options, eval_batch_per_rank
from okd.data.fingerprint import files_fingerprint
from okd.data.links import LinkGuard
from okd.data.memory import check_fits
from okd.data.imagenet import EvalFolder, FolderEvalLoader, FolderTrainLoader, TrainFolder, _batches
from okd.data.loaders import TensorEvalLoader, TensorTrainLoader
from okd.data.sampling import cpu_generator, even_split, make_plan
from okd.errors import OKDUserError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})
BUDGET_CAP = 4 << 30  # bytes; --in-memory auto decodes into memory up to min(this, 25% of what is free)
DECODE_BATCH = 64
LAYOUT = "expected {root}/train/<class>/<images> and {root}/val/<class>/<images> (or --val-split to carve val from train)"


def load_rgb(path: str) -> Image.Image:
    """Any mode PIL decodes (grayscale, CMYK, RGBA, palette) as RGB; alpha is dropped, as torchvision does."""
    with open(path, "rb") as handle:
        image = Image.open(handle)
        if image.mode in ("P", "PA", "LA"):  # via RGBA: no PIL warning for palette transparency
            image = image.convert("RGBA")
        return image.convert("RGB")


@dataclass
class SampleList:
    """What the ImageNet datasets read from an ImageFolder: (path, label) pairs and a decoder."""

    samples: list[tuple[str, int]]

    @staticmethod
    def loader(path: str) -> Image.Image:
        return load_rgb(path)


@dataclass
class FolderIndex:
    class_names: list[str]
    train: list[tuple[str, int]]  # absolute paths, class-major, sorted within a class
    val: list[tuple[str, int]]
    train_counts: list[int]  # per class: the training labels are these counts of 0, 1, ...
    val_files: list[str] | None  # with --val-split: train/-relative paths of the held-out images
    fingerprints: dict[str, list[Any]]  # "train/<class>": [file count, digest of the sorted names]
    notes: list[str] = field(default_factory=list)  # links skipped while listing (okd.data.links)


def list_images(folder: Path, guard: LinkGuard | None = None) -> list[str]:
    """Image files under ``folder`` (recursively) as sorted '/'-relative paths.

    Files are recognised by extension, case-insensitively; anything else (notes, .DS_Store) and
    hidden folders are skipped. Links are followed as ``okd.data.links`` says: an image never
    counts twice or under another class (``guard``: the split's shared state and notes).
    """
    guard = guard or LinkGuard(folder.parent)
    found = guard.list_class(folder, lambda name: Path(name).suffix.lower() in IMAGE_EXTENSIONS, skip_hidden=True)
    return sorted(f"{rel}/{name}" if rel else name for rel, name in found)


def class_folders(split_dir: Path) -> list[str]:
    return sorted(entry.name for entry in split_dir.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def fingerprint(names: list[str]) -> list[Any]:
    return [len(names), hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]]


def split_class(files: list[str], fraction: float, seed: int, class_name: str) -> set[int]:
    """Positions of ``files`` held out for validation: round(fraction * n), at least 1, at most n - 1.

    A pure function of (seed, fraction, class name, sorted file list): the same folder always
    gives the same split, and adding a class leaves the others' splits unchanged.
    """
    n = len(files)
    if n < 2:
        return set()
    count = min(n - 1, max(1, math.floor(fraction * n + 0.5)))
    order = torch.randperm(n, generator=cpu_generator("okd.val_split", seed, repr(fraction), class_name))
    return set(order[:count].tolist())


def scan(root: Path, cfg: DataConfig, saved: dict[str, Any] | None) -> FolderIndex:
    """List and check the folder; for ``okd eval`` (``saved`` + eval_only) train/ is not listed."""
    layout = LAYOUT.format(root=root)
    train_dir, val_dir = root / "train", root / "val"
    if cfg.eval_only and saved is not None:
        return _scan_for_eval(root, train_dir, val_dir, saved, cfg)
    if not train_dir.is_dir():
        raise OKDUserError(f"no image folder at {root}: {train_dir} is missing; {layout}")
    classes = class_folders(train_dir)
    if not classes:
        raise OKDUserError(f"{train_dir} has no class folders; {layout}")
    files = {}
    guard = LinkGuard(train_dir)
    for name in classes:
        files[name] = list_images(train_dir / name, guard)
        if not files[name]:
            raise OKDUserError(f"class folder {train_dir / name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); add some or remove it")
    fingerprints = {f"train/{name}": fingerprint(files[name]) for name in classes}
    train, val, counts = [], [], []
    val_files: list[str] | None = None
    val_notes: list[str] = []
    if cfg.val_split is not None:
        val_files = []
        for label, name in enumerate(classes):
            held = split_class(files[name], cfg.val_split, cfg.seed, name)
            for position, rel in enumerate(files[name]):
                (val if position in held else train).append((str(train_dir / name / rel), label))
            val_files += [f"{name}/{rel}" for position, rel in enumerate(files[name]) if position in held]
            counts.append(len(files[name]) - len(held))
    else:
        for label, name in enumerate(classes):
            train += [(str(train_dir / name / rel), label) for rel in files[name]]
            counts.append(len(files[name]))
        val, val_fingerprints, val_notes = _scan_val(root, val_dir, classes)
        fingerprints.update(val_fingerprints)
    if not val:
        raise OKDUserError(f"--val-split left no validation images in {train_dir} (every class holds a single image); add images")
    notes = guard.notes(str(train_dir)) + val_notes
    return FolderIndex(classes, train, val, counts, val_files, fingerprints, notes)


def _scan_val(root: Path, val_dir: Path, classes: list[str]) -> tuple[list[tuple[str, int]], dict[str, list[Any]], list[str]]:
    """val/'s images labelled by name against ``classes``; a class val/ may lack, never one it adds."""
    if not val_dir.is_dir():
        raise OKDUserError(f"no validation folder {val_dir}: add it, or pass --val-split 0.1 to hold out part of train/; {LAYOUT.format(root=root)}")
    index = {name: i for i, name in enumerate(classes)}
    val, fingerprints = [], {}
    guard = LinkGuard(val_dir)
    for name in class_folders(val_dir):
        if name not in index:
            raise OKDUserError(f"validation class folder {val_dir / name} has no counterpart among the training classes; rename or remove it")
        names = list_images(val_dir / name, guard)
        fingerprints[f"val/{name}"] = fingerprint(names)
        val += [(str(val_dir / name / rel), index[name]) for rel in names]
    if not val:
        raise OKDUserError(f"{val_dir} holds no images; {LAYOUT.format(root=root)}")
    val.sort(key=lambda item: item[1])  # class-major, by the training class order
    return val, fingerprints, guard.notes(str(val_dir))


def _scan_for_eval(root: Path, train_dir: Path, val_dir: Path, saved: dict[str, Any], cfg: DataConfig) -> FolderIndex:
    classes, counts = saved["class_names"], saved["train_counts"]
    if saved.get("val_files") is None:
        val, _, _ = _scan_val(root, val_dir, classes)
    else:
        index = {name: i for i, name in enumerate(classes)}
        val = []
        for rel in saved["val_files"]:
            path = train_dir / rel
            if not path.is_file():
                raise OKDUserError(f"validation image {path} (held out by the run's --val-split) is missing; point --data at the run's image folder")
            val.append((str(path), index[rel.split("/", 1)[0]]))
    return FolderIndex(classes, [], val, counts, saved.get("val_files"), {})


def _check_manifest(saved: Any) -> dict[str, Any]:
    """The checkpoint's record of the folder, type-checked (a checkpoint is user input)."""
    ok = isinstance(saved, dict) and saved.get("kind") == "folder"
    ok = ok and isinstance(saved.get("class_names"), list) and all(isinstance(n, str) for n in saved["class_names"])
    ok = ok and isinstance(saved.get("train_counts"), list) and len(saved["train_counts"]) == len(saved["class_names"])
    ok = ok and all(isinstance(c, int) and c > 0 for c in saved["train_counts"]) and isinstance(saved.get("fingerprints"), dict)
    files = saved.get("val_files") if ok else None
    ok = ok and (files is None or (isinstance(files, list) and all(isinstance(f, str) and f.split("/", 1)[0] in saved["class_names"] for f in files)))
    if not ok:
        raise OKDUserError("the checkpoint's record of its image folder (class names, split) is missing or malformed; was it written by `okd train --dataset folder`?")
    return saved


def check_same_files(root: Path, saved: dict[str, Any], now: dict[str, list[Any]]) -> None:
    """--resume: the folder must hold the files the run began with (the split and indices depend on them)."""
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            then_count = saved[key][0] if key in saved else 0
            now_count = now[key][0] if key in now else 0
            raise OKDUserError(
                f"--resume: {root / key} changed since the run began ({then_count} images then, {now_count} now); "
                "restore it, or start a new run in another --out folder"
            )


def memory_budget(device: torch.device) -> int:
    """Bytes --in-memory auto may decode into: min(4 GiB, 25% of free host memory or free CUDA memory)."""
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = _available_host_memory()
    return min(BUDGET_CAP, free // 4)


def _available_host_memory() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def decode_all(samples: list[tuple[str, int]], size: int, device: torch.device, workers: int, what: str, show: bool) -> torch.Tensor:
    """uint8 [N, 3, size, size] on ``device``: every image resized and centre-cropped, in a worker pool."""
    from okd.common.progress import progress

    store = torch.empty((len(samples), 3, size, size), dtype=torch.uint8, device=device)
    dataset = EvalFolder(SampleList(samples), 0, len(samples), size=size, resize=size)
    workers = min(workers, -(-len(samples) // DECODE_BATCH))
    loader = DataLoader(dataset, batch_size=DECODE_BATCH, num_workers=workers)
    bar = progress(total=len(samples), desc=f"decoding {what} images", disable=not show)
    for images, _labels, indices in _batches(loader):
        store[indices.to(device)] = images.to(device)
        bar.update(len(indices))
    bar.close()
    return store


def build_folder(cfg: DataConfig, data_dir: str | Path, device: torch.device) -> tuple[DataSpec, Any, Any]:
    """Spec and loaders for an image folder; the spec's manifest is what the run must save."""

    check_folder_options("folder", cfg.image_size, cfg.val_split, cfg.in_memory)
    root = Path(data_dir).expanduser()
    saved = _check_manifest(cfg.manifest) if cfg.manifest is not None else None
    if cfg.eval_only and saved is None:
        raise OKDUserError("evaluating a folder dataset needs the class names its run saved; use a checkpoint written by `okd train --dataset folder`")
    index = scan(root, cfg, saved)
    if saved is not None and not cfg.eval_only:
        check_same_files(root, saved["fingerprints"], index.fingerprints)
    size = cfg.image_size or 32
    num_images = sum(index.train_counts) + len(index.val)
    if saved is not None and not cfg.eval_only:
        in_memory = bool(saved.get("in_memory"))  # resume as the run began, whatever memory is free now
    else:
        in_memory = cfg.in_memory == "yes" or (cfg.in_memory == "auto" and num_images * 3 * size * size <= memory_budget(device))
    if in_memory and not cfg.eval_only:  # --in-memory yes (or a resumed run that began so): the store must fit
        check_fits(f"decoding {num_images} images of {size}px into memory", num_images * 3 * size * size, device,
                   "use --in-memory no (stream them from disk) or a smaller --image-size")
    targets = torch.repeat_interleave(torch.arange(len(index.class_names)), torch.tensor(index.train_counts))
    spec = DataSpec(
        "folder", len(index.class_names), len(targets), len(index.val), size, targets, tuple(index.class_names),
        {"kind": "folder", "class_names": index.class_names, "train_counts": index.train_counts, "in_memory": in_memory,
         "val_files": index.val_files, "fingerprints": index.fingerprints},
        files_fingerprint(root, {"train": index.train, "val": index.val}, len(index.class_names)), tuple(index.notes),
    )
    plan = make_plan(cfg.sampler, targets, cfg.batch_size, cfg.world_size, cfg.rank, cfg.seed, cfg.m_per_class)
    normalizer = Normalizer(IMAGENET_MEAN, IMAGENET_STD, device)
    if cfg.eval_only:
        return spec, None, _streamed_eval(index.val, size, cfg, device)
    if not in_memory:
        train = FolderTrainLoader(TrainFolder(SampleList(index.train), cfg.seed, size), plan, cfg, device)
        return spec, train, _streamed_eval(index.val, size, cfg, device)
    show = cfg.rank == 0
    train_x = decode_all(index.train, size, device, cfg.workers, "training", show)
    val_x = decode_all(index.val, size, device, cfg.workers, "validation", show)
    val_y = torch.tensor([label for _, label in index.val], dtype=torch.int64, device=device)
    train_loader = TensorTrainLoader(train_x, targets.to(device), plan, normalizer, size // 8, True, cfg.channels_last)
    eval_loader = TensorEvalLoader(val_x, val_y, eval_batch_per_rank(cfg), normalizer, cfg.rank, cfg.world_size, cfg.channels_last)
    return spec, train_loader, eval_loader


def _streamed_eval(val: list[tuple[str, int]], size: int, cfg: DataConfig, device: torch.device) -> FolderEvalLoader:

    start, stop = even_split(len(val), cfg.world_size, cfg.rank)
    return FolderEvalLoader(EvalFolder(SampleList(val), start, stop, size=size, resize=size), eval_batch_per_rank(cfg), cfg, device)


def count_train_images(root: str | Path, val_split: float | None = None) -> int | None:
    """How many images ``root/train/`` will train on (less the --val-split share), for a recipe that fits
    the batch size to the data; None when there is no train/ (building the data then says what is wrong)."""
    train_dir = Path(root).expanduser() / "train"
    if not train_dir.is_dir():
        return None
    total = sum(len(list_images(train_dir / name)) for name in class_folders(train_dir))
    return round(total * (1 - (val_split or 0.0)))
