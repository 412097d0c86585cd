"""What the benchmarks share: CPU-idle waits, memory readings, device sync, the torchvision-style
PIL pipeline the original code uses. One module every benchmark may import (and none imports back)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from okd.data.augment import Normalizer
from okd.data.batch import Batch


def status_kib(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def reset_hwm() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    except OSError:
        pass


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all cores busy over ``seconds`` (from /proc/stat), whoever uses them."""
    def sample() -> list[int]:
        return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]

    try:
        a = sample()
        time.sleep(seconds)
        b = sample()
    except OSError:
        return 0.0
    delta = [y - x for x, y in zip(a, b)]
    return 1.0 - (delta[3] + delta[4]) / max(sum(delta), 1)


def wait_for_idle(limit_s: float, threshold: float = 0.15) -> float:
    """On a shared machine, wait (at most ``limit_s``) until other processes leave the CPU; returns the last busy fraction."""
    deadline = time.monotonic() + limit_s
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def run_script(main: Callable[[], Any], name: str) -> None:
    """A benchmark's ``__main__``: a user error is one line and exit 2, as for ``okd`` itself."""
    from okd.errors import OKDUserError

    try:
        main()
    except OKDUserError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PILCifar(torch.utils.data.Dataset):
    """What torchvision.datasets.CIFAR100 does per item: HWC uint8 -> PIL image -> transforms."""

    def __init__(self, data_hwc: np.ndarray, labels: list[int], transform) -> None:
        self.data, self.labels, self.transform = data_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.data[index])), self.labels[index]


def pil_loaders(case: dict[str, Any], workers: int, batch_size: int, eval_batch_size: int):
    """torchvision-style train/test DataLoaders over the same uint8 images as okd's loaders."""
    from torchvision import transforms

    train, test = case["train_loader"], case["eval_loader"]
    norm: Normalizer = train.normalizer
    train_tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), transforms.Normalize(norm.mean, norm.std)])
    test_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(norm.mean, norm.std)])

    class WithIndex(PILCifar):
        """The original MCL-OKD dataset also returns each sample's index (its memory-bank row)."""

        def __getitem__(self, index: int):
            image, label = super().__getitem__(index)
            return image, label, index

    hwc = lambda x: x.cpu().permute(0, 2, 3, 1).contiguous().numpy()  # noqa: E731
    pin = case["device"].type == "cuda"
    train_set = WithIndex(hwc(train.images), train.targets.cpu().tolist(), train_tf)
    test_set = WithIndex(hwc(test.images), test.targets.cpu().tolist(), test_tf)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=pin)
    test_loader = torch.utils.data.DataLoader(test_set, batch_size=eval_batch_size, shuffle=False, num_workers=workers, pin_memory=pin)
    return train_loader, test_loader


def as_batches(loader: Any, device: torch.device) -> Iterator[Batch]:
    for x, y, i in loader:
        yield Batch(x.to(device, non_blocking=True), y.to(device, non_blocking=True), i.to(device, non_blocking=True))
