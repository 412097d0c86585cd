"""ImageNet-style folders (``<root>/train/<class>/*.JPEG``, ``<root>/val/<class>/*.JPEG``).

Decoding and the reference's per-image transforms run in DataLoader workers (torchvision
ImageFolder + PIL); workers hand back uint8 tensors, and the float conversion and normalisation
happen batched on the training device (4x less to copy than float32). Order and rank slicing
come from the same sample plan as the in-memory datasets; each sample's random crop and flip come
from a generator seeded by (seed, epoch, index), so runs are deterministic and resumable (the
per-sample draws do not depend on the world size either, though they differ from a global draw).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from okd.data.augment import IMAGENET_MEAN, IMAGENET_STD, Normalizer
from okd.data.batch import Batch
from okd.data.config import DataConfig, DataSpec
from okd.data.fingerprint import files_fingerprint
from okd.data.links import LinkGuard
from okd.data.loaders import check_views
from okd.data.sampling import SamplePlan, cpu_generator, even_split, make_plan
from okd.errors import OKDUserError

INPUT_SIZE = 224
RESIZE = 256
LAYOUT = "expected {root}/train/<class>/*.JPEG and {root}/val/<class>/*.JPEG (the ImageFolder layout)"


def resized_crop_params(width: int, height: int, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a RandomResizedCrop window, drawn from ``generator``.

    The documented torchvision algorithm: up to 10 tries of an area fraction in ``scale`` and a
    log-uniform aspect ratio in ``ratio``; otherwise the whole image clipped to ``ratio``, centred.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        draws = torch.rand(2, generator=generator, dtype=torch.float64).tolist()
        target_area = area * (scale[0] + (scale[1] - scale[0]) * draws[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * draws[1])
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def load_image(folder: ImageFolder, path: str) -> Image.Image:
    """Decode one image; a file PIL cannot read is the user's to fix (named, not a PIL traceback)."""
    try:
        return folder.loader(path)
    except UnidentifiedImageError:
        raise OKDUserError(f"cannot decode image {path}: not an image file PIL can identify (delete or replace it)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise OKDUserError(f"cannot decode image {path}: {' '.join(str(exc).split()) or type(exc).__name__}") from None


def _worker_message(exc: OKDUserError) -> str:
    """The original one-line message of an OKDUserError re-raised from a DataLoader worker.

    The DataLoader re-raises a worker's exception in the main process with the worker's whole
    traceback as its message; its last line is ``<module>.<class>: <message>``.
    """
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def _batches(loader: DataLoader) -> Iterator[Any]:
    """Iterate ``loader``; a user error raised in a worker process reaches the user as one line."""
    try:
        yield from loader
    except OKDUserError as exc:
        raise OKDUserError(_worker_message(exc)) from None


class TrainFolder(Dataset):
    """Items are addressed by (index, epoch): RandomResizedCrop(size, 224 for ImageNet) + flip seeded per sample.

    ``folder`` is an ImageFolder or anything with its ``samples`` and ``loader`` (data/folder.py).
    With ``views`` > 1 an item is [views, C, H, W]: the train transform applied ``views`` times
    with independent seeds; view 0 is the one-view item.
    """

    def __init__(self, folder: ImageFolder, seed: int, size: int = INPUT_SIZE, views: int = 1) -> None:
        self.folder, self.seed, self.size, self.views = folder, seed, size, views

    def __len__(self) -> int:
        return len(self.folder.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, epoch = key
        path, label = self.folder.samples[index]
        image = load_image(self.folder, path)
        drawn = [self.transform(image, epoch, index, view) for view in range(self.views)]
        return (drawn[0] if self.views == 1 else torch.stack(drawn)), label, index

    def transform(self, image: Image.Image, epoch: int, index: int, view: int) -> torch.Tensor:
        parts = (self.seed, epoch, index) if view == 0 else (self.seed, epoch, index, "view", view)
        generator = cpu_generator("okd.imagenet", *parts)
        top, left, h, w = resized_crop_params(*image.size, generator)
        image = TF.resized_crop(image, top, left, h, w, [self.size, self.size], InterpolationMode.BILINEAR, antialias=True)
        if float(torch.rand(1, generator=generator)) < 0.5:
            image = TF.hflip(image)
        return TF.pil_to_tensor(image)


class EvalFolder(Dataset):
    """Samples ``[start, stop)`` of the val folder: Resize(resize) + CenterCrop(size), no randomness.

    ImageNet: shorter side to 256, centre 224; the folder dataset: shorter side to size, centre size.
    """

    def __init__(self, folder: ImageFolder, start: int, stop: int, size: int = INPUT_SIZE, resize: int = RESIZE) -> None:
        self.folder, self.start, self.stop, self.size, self.resize = folder, start, stop, size, resize

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        index = self.start + position
        path, label = self.folder.samples[index]
        image = TF.resize(load_image(self.folder, path), self.resize, InterpolationMode.BILINEAR, antialias=True)
        image = TF.center_crop(image, [self.size, self.size])
        return TF.pil_to_tensor(image), label, index


class PlanBatchSampler:
    """This rank's slice of every global batch from ``start_step`` on, as (index, epoch) keys."""

    def __init__(self, plan: SamplePlan) -> None:
        self.plan = plan
        self.epoch = 0
        self.start_step = 0

    def __len__(self) -> int:
        return self.plan.steps - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for global_batch in self.plan.batches(self.epoch, self.start_step):
            lo, hi = self.plan.rank_bounds(len(global_batch))
            yield [(index, self.epoch) for index in global_batch[lo:hi].tolist()]


def _loader_options(cfg: DataConfig, device: torch.device) -> dict[str, Any]:
    options: dict[str, Any] = {"num_workers": cfg.workers, "pin_memory": device.type == "cuda"}
    if cfg.workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options


def _to_batch(item: tuple[torch.Tensor, torch.Tensor, torch.Tensor], device: torch.device, normalizer: Normalizer, channels_last: bool) -> Batch:
    images, targets, indices = (t.to(device, non_blocking=True) for t in item)
    if images.dim() == 5:  # [B, V, C, H, W] items of a multi-view dataset -> view-major [V, B, C, H, W]
        size, views = images.shape[:2]
        flat = normalizer(images.transpose(0, 1).flatten(0, 1), channels_last)
        return Batch(flat.unflatten(0, (views, size)), targets.to(torch.int64), indices.to(torch.int64))
    return Batch(normalizer(images, channels_last), targets.to(torch.int64), indices.to(torch.int64))


class FolderTrainLoader:
    """The TrainLoader for ImageNet folders: one persistent DataLoader re-aimed at each epoch."""

    def __init__(self, dataset: TrainFolder, plan: SamplePlan, cfg: DataConfig, device: torch.device) -> None:
        self.plan, self.device, self.channels_last = plan, device, cfg.channels_last
        self.normalizer = Normalizer(IMAGENET_MEAN, IMAGENET_STD, device)
        self.sampler = PlanBatchSampler(plan)
        self.dataset = dataset
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, **_loader_options(cfg, device))

    def __len__(self) -> int:
        return self.plan.steps

    def set_views(self, views: int) -> None:
        """Before the first epoch: persistent workers keep the copy of the dataset they started with."""
        self.dataset.views = check_views(views)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        """This rank's batches ``start_step..`` of ``epoch``; skipped batches are never decoded."""
        self.plan.check_start(start_step)
        return self._iterate(epoch, start_step)

    def _iterate(self, epoch: int, start_step: int) -> Iterator[Batch]:
        self.sampler.epoch, self.sampler.start_step = epoch, start_step
        for item in _batches(self.loader):
            yield _to_batch(item, self.device, self.normalizer, self.channels_last)


class FolderEvalLoader:
    """The EvalLoader for ImageNet folders: this rank's contiguous shard of val/, in order."""

    def __init__(self, dataset: EvalFolder, batch_size: int, cfg: DataConfig, device: torch.device) -> None:
        self.device, self.channels_last = device, cfg.channels_last
        self.normalizer = Normalizer(IMAGENET_MEAN, IMAGENET_STD, device)
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, **_loader_options(cfg, device))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for item in _batches(self.loader):
            yield _to_batch(item, self.device, self.normalizer, self.channels_last)


class FixedClassFolder(ImageFolder):
    """An ImageFolder whose class list is given (train/'s), so val/ gets the same label numbers.

    Defined at module level so DataLoader workers can receive it under spawn/forkserver too.
    """

    def __init__(self, root: str, classes: list[str]) -> None:
        self.fixed_classes = list(classes)
        super().__init__(root)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return self.fixed_classes, {name: i for i, name in enumerate(self.fixed_classes)}

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], extensions: tuple[str, ...] | None = None,
                     is_valid_file: Any = None, allow_empty: bool = False) -> list[tuple[str, int]]:
        """torchvision's listing and order, with links followed as okd.data.links says (never an image
        twice, never under another class); what was skipped is in ``self.notes``."""
        from torchvision.datasets.folder import IMG_EXTENSIONS

        guard = LinkGuard(Path(directory))
        keep = is_valid_file or (lambda name: name.lower().endswith(extensions or IMG_EXTENSIONS))
        samples, empty = [], []
        for name in sorted(class_to_idx):
            found = sorted(guard.list_class(Path(directory) / name, keep, skip_hidden=False))
            empty += [] if found else [name]
            samples += [(os.path.join(directory, name, rel, file), class_to_idx[name]) for rel, file in found]
        if empty and not allow_empty:
            raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)}. Supported extensions are: "
                                    f"{', '.join(extensions or IMG_EXTENSIONS)}")
        self.notes = guard.notes(directory)
        return samples


def open_folders(root: Path) -> tuple[FixedClassFolder, FixedClassFolder]:
    """ImageFolders for train/ and val/, with val labelled by train's class list (checked equal)."""
    layout = LAYOUT.format(root=root)
    train_dir, val_dir = root / "train", root / "val"
    for folder in (train_dir, val_dir):
        if not folder.is_dir():
            raise OKDUserError(f"no ImageNet found at {root}: {folder} is missing; {layout}")
    classes = sorted(entry.name for entry in train_dir.iterdir() if entry.is_dir())
    val_classes = sorted(entry.name for entry in val_dir.iterdir() if entry.is_dir())
    if not classes:
        raise OKDUserError(f"{train_dir} has no class folders; {layout}")
    if val_classes != classes:
        missing = sorted(set(classes) - set(val_classes))
        extra = sorted(set(val_classes) - set(classes))
        detail = "; ".join(part for part in (_listing("missing from val", missing), _listing("not in train", extra)) if part)
        raise OKDUserError(f"{val_dir} and {train_dir} have different class folders ({detail}); both must hold the same classes")

    try:
        return FixedClassFolder(str(train_dir), classes), FixedClassFolder(str(val_dir), classes)
    except (FileNotFoundError, OSError) as exc:
        raise OKDUserError(f"cannot read ImageNet folders under {root}: {' '.join(str(exc).split())}; {layout}") from None


def _listing(label: str, names: list[str]) -> str:
    if not names:
        return ""
    shown = ", ".join(names[:5]) + (f", … ({len(names)} in all)" if len(names) > 5 else "")
    return f"{label}: {shown}"


def build_imagenet(cfg: DataConfig, data_dir: str | Path, device: torch.device) -> tuple[DataSpec, FolderTrainLoader, FolderEvalLoader]:
    """Spec and loaders for an ImageNet-style folder tree at ``data_dir``."""
    root = Path(data_dir).expanduser()
    train, val = open_folders(root)
    targets = torch.tensor(train.targets, dtype=torch.int64)
    classes = tuple(train.classes)
    fingerprint = files_fingerprint(root, {"train": train.samples, "val": val.samples}, len(classes))
    spec = DataSpec("imagenet", len(classes), len(train.samples), len(val.samples), INPUT_SIZE, targets, classes,
                    {"class_names": list(classes)}, fingerprint, tuple(train.notes + val.notes))
    plan = make_plan(cfg.sampler, targets, cfg.batch_size, cfg.world_size, cfg.rank, cfg.seed, cfg.m_per_class)
    start, stop = even_split(spec.num_test, cfg.world_size, cfg.rank)
    eval_batch = -(-cfg.eval_batch_size // cfg.world_size)
    return (
        spec,
        FolderTrainLoader(TrainFolder(train, cfg.seed), plan, cfg, device),
        FolderEvalLoader(EvalFolder(val, start, stop), eval_batch, cfg, device),
    )
