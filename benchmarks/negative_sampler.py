"""MCL-OKD benchmarks: the class-aware negative sampler alone, and the contrastive loss batched vs per pair.

    python benchmarks/negative_sampler.py --device cpu --json sampler.json

Part 1 draws contrast indices [B, K+1] (batch 64; K = 256 and 16384) for a CIFAR-100-sized set
(50,000 items, 100 classes) and an ImageNet-sized one (1,281,167 items, 1000 classes) and reports
samples/s and peak memory. Part 2 runs embedding heads + L_MCL forward and backward at VGG-16
sizes (d = 512 -> 128, K = 16384, batch 64, N = 4, 50,000 bank rows) in the batched form (one
gather per bank) and the per-pair reference form (one gather per ordered pair).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above the level before the measured
call; on CPU the process's resident high-water mark (VmHWM, reset through
/proc/self/clear_refs) above the resident size before the call, and for part 2 also the bytes
autograd keeps for backward (unique storages seen by a saved-tensor hook), which is exact.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from okd.losses.contrastive import l2_normalise, multiview_nce_loss, multiview_nce_loss_pairwise
from okd.losses.negatives import build_class_index, contrast_indices

MIB = 2**20


def _release_heap() -> None:
    """Make glibc hand large blocks straight back to the OS, so the RSS follows live tensors.

    By default glibc raises its mmap threshold after big frees and keeps freed memory resident,
    which hides repeated allocations from the RSS high-water mark.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD, fixed (disables the dynamic threshold)
    libc.malloc_trim(0)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class PeakMemory:
    """Peak bytes allocated during a block, above the level at its start."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            _release_heap()
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            except OSError:
                pass
            self.start = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.peak = max(_status_kib("VmHWM") * 1024 - self.start, 0)


class SavedForBackward:
    """Bytes of the distinct storages autograd saves for backward inside the block."""

    def __init__(self) -> None:
        self.storages: dict[int, int] = {}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self) -> SavedForBackward:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


Case = tuple[dict[str, Any], Callable[[], Any]]


def sampler_case(device: torch.device, num_train: int, classes: int, k: int, batch: int) -> Case:
    """Draw contrast indices for one batch of a balanced, shuffled label layout."""
    targets = (torch.arange(num_train) % classes)[torch.randperm(num_train)]
    index = build_class_index(targets, classes)
    index = type(index)(*(t.to(device) for t in index[:4]), index.min_candidates)
    indices = torch.randint(0, num_train, (batch,), device=device)
    info = {"num_train": num_train, "classes": classes, "k": k, "batch": batch, "output_mib": batch * (k + 1) * 8 / MIB}
    return info, lambda: contrast_indices(indices, index, k)


def contrastive_case(device: torch.device, form: str, num_views: int, batch: int, k: int, in_dim: int, feat_dim: int, num_data: int) -> Case:
    """Embedding heads + L_MCL forward and backward, batched or per pair, on fixed inputs."""
    torch.manual_seed(0)
    heads = nn.ModuleList(nn.Linear(in_dim, feat_dim) for _ in range(num_views)).to(device)
    features = torch.randn(num_views, batch, in_dim, device=device, requires_grad=True)
    banks = l2_normalise(torch.randn(num_views, num_data, feat_dim, device=device))
    index = build_class_index(torch.arange(num_data) % 100, 100)
    index = type(index)(*(t.to(device) for t in index[:4]), index.min_candidates)
    idx = contrast_indices(torch.randperm(num_data, device=device)[:batch], index, k)
    loss_fn = multiview_nce_loss if form == "batched" else multiview_nce_loss_pairwise

    def step() -> torch.Tensor:
        embeddings = torch.stack([l2_normalise(h(f)) for h, f in zip(heads, features)])
        loss = loss_fn(banks, embeddings, idx, 0.1, num_data)
        loss.backward()
        return loss.detach()

    info = {"form": form, "num_views": num_views, "batch": batch, "k": k, "in_dim": in_dim, "feat_dim": feat_dim}
    return info, step


def measure(cases: list[Case], device: torch.device, repeats: int, saved: bool = False) -> list[dict[str, Any]]:
    """Time every case first (default allocator), then take each one's peak memory."""
    rows = []
    for info, run in cases:
        rows.append({**info, "seconds": _median_seconds(run, device, repeats)})
    if device.type == "cpu":
        _release_heap()
    for row, (_, run) in zip(rows, cases):
        with PeakMemory(device) as peak, SavedForBackward() as kept:
            value = run()
        row["peak_mib"] = peak.peak / MIB
        if saved:
            row["saved_for_backward_mib"] = kept.bytes / MIB
            row["loss"] = float(value)
    return rows


def _table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:,.3f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: cuda if available)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions per case (median reported)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--skip-sampler", action="store_true", help="skip part 1")
    parser.add_argument("--skip-contrastive", action="store_true", help="skip part 2")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else "cpu" if args.device == "auto" else args.device)

    result: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if device.type == "cuda":
        result["device_name"] = torch.cuda.get_device_name(device)
    if not args.skip_sampler:
        cases = [sampler_case(device, n, c, k, args.batch) for n, c in ((50_000, 100), (1_281_167, 1000)) for k in (256, 16384)]
        rows = measure(cases, device, args.repeats)
        for row in rows:
            row["samples_per_s"] = row["batch"] / row["seconds"]
        result["sampler"] = rows
        print(f"## Negative sampler ({device}, batch {args.batch})\n")
        print(_table(rows, ["num_train", "classes", "k", "samples_per_s", "seconds", "peak_mib", "output_mib"]) + "\n")
    if not args.skip_contrastive:
        sizes = {"num_views": 4, "batch": args.batch, "k": 16384, "in_dim": 512, "feat_dim": 128, "num_data": 50_000}
        cases = [contrastive_case(device, form, **sizes) for form in ("batched", "per_pair")]
        rows = measure(cases, device, max(1, args.repeats // 2), saved=True)
        result["contrastive"] = rows
        print(f"## L_MCL forward+backward, VGG-16 sizes ({device}: N=4, B={args.batch}, K=16384, d=512->128)\n")
        print(_table(rows, ["form", "seconds", "peak_mib", "saved_for_backward_mib", "loss"]) + "\n")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
