"""How much memory is free where tensors will live, and the one-line refusal when something cannot fit.

Used before anything large is built (okd.engine.preflight: the cohort; the data layer: synthetic
data and decoded image stores), so a run that cannot fit is refused at once, not killed later.
Free host memory is MemAvailable, capped by the container's cgroup limit; on CUDA the GPU's free memory.
"""

from __future__ import annotations

from pathlib import Path

import torch

from okd.errors import OKDUserError

GiB = 2**30


def available_memory(device: torch.device) -> int | None:
    """Bytes free where tensors on ``device`` live (None where it cannot be told)."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    found = [free for free in (_meminfo_available(), _cgroup_available()) if free is not None]
    return min(found) if found else None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> int | None:
    """The container's limit minus its use (cgroup v2), when there is a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        return None


def check_fits(what: str, need: int, device: torch.device, advice: str) -> None:
    """Refuse, naming the estimate, when ``need`` bytes cannot fit in what is free on ``device``."""
    free = available_memory(device)
    if free is not None and need > free:
        where = "GPU memory" if device.type == "cuda" else "RAM"
        raise OKDUserError(f"{what} needs at least {need / GiB:.2f} GiB but {device} has {free / GiB:.2f} GiB of {where} "
                           f"free; {advice}")


def synthetic_bytes(num_train: int, num_test: int, size: int) -> int:
    """The uint8 images of ``--dataset synthetic`` (made on the CPU, then kept on the device)."""
    return (num_train + num_test) * 3 * size * size
