"""Images/s of okd's batched on-device CIFAR augmentation vs the usual per-image PIL pipeline.

Both produce the CIFAR-100 training recipe (RandomCrop(32, padding=4), RandomHorizontalFlip,
normalise) for batches of a 50,000 x 3x32x32 uint8 synthetic set, on the same machine in one run:

* okd: the TrainLoader of ``okd.data`` (one uint8 tensor on --device; gather, crop, flip and
  normalise batched on that device);
* pil: a torchvision-style Dataset of PIL images with torchvision transforms, through a
  DataLoader with --pil-workers processes, batches copied to --device.

Usage: python benchmarks/data_pipeline.py --device cpu --steps 100 --json out.json

On a shared machine, ``--wait-idle S`` waits (at most S seconds) for the CPU to be idle before each
pipeline, as the other benchmarks do; the JSON and the printed header give the torch thread count,
the 1-minute load average before each pipeline and the busy fraction seen, so a figure taken on a
loaded machine shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import PILCifar, sync, wait_for_idle  # noqa: E402

from okd.data.augment import CIFAR100_MEAN, CIFAR100_STD, Normalizer  # noqa: E402
from okd.data.loaders import TensorTrainLoader  # noqa: E402
from okd.data.sampling import EpochPlan  # noqa: E402


def bench_okd(images: torch.Tensor, labels: torch.Tensor, device: torch.device, batch_size: int, steps: int, warmup: int) -> dict:
    store, targets = images.to(device), labels.to(device)
    plan = EpochPlan(store.shape[0], batch_size, seed=0)
    loader = TensorTrainLoader(store, targets, plan, Normalizer(CIFAR100_MEAN, CIFAR100_STD, device), pad=4, flip=True)
    batches = (batch for epoch in range(10**6) for batch in loader.epoch(epoch))
    for _ in range(warmup):
        next(batches)
    sync(device)
    start = time.perf_counter()
    count = 0
    for _ in range(steps):
        count += next(batches).targets.shape[0]
    sync(device)
    seconds = time.perf_counter() - start
    return {"pipeline": "okd batched on-device", "images": count, "seconds": seconds, "images_per_s": count / seconds}


def bench_pil(images: torch.Tensor, labels: torch.Tensor, device: torch.device, batch_size: int, steps: int, warmup: int, workers: int) -> dict:
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD),
        ]
    )
    dataset = PILCifar(images.permute(0, 2, 3, 1).contiguous().numpy(), labels.tolist(), transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=device.type == "cuda", persistent_workers=workers > 0
    )
    started = time.perf_counter()

    def batches():
        while True:
            yield from loader

    stream = batches()
    for _ in range(warmup):  # includes starting the workers
        x, _ = next(stream)
    startup = time.perf_counter() - started
    sync(device)
    start = time.perf_counter()
    count = 0
    for _ in range(steps):
        x, y = next(stream)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        count += x.shape[0]
    sync(device)
    seconds = time.perf_counter() - start
    return {
        "pipeline": f"torchvision PIL, {workers} workers",
        "images": count,
        "seconds": seconds,
        "images_per_s": count / seconds,
        "warmup_seconds": startup,
    }


def load_average_1min() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="where batches end up: cpu, cuda, cuda:1 … (default cpu)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per batch (default 128)")
    parser.add_argument("--steps", type=int, default=100, help="timed batches per pipeline (default 100)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed batches first (default 5)")
    parser.add_argument("--pil-workers", type=int, default=2, help="DataLoader processes of the PIL pipeline (default 2)")
    parser.add_argument("--num-images", type=int, default=50_000, help="size of the synthetic set (default 50,000)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads in this process (default: torch's choice)")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="S",
                        help="before each pipeline wait up to S seconds for the CPU to be idle (shared machines; default 0: don't)")
    parser.add_argument("--json", metavar="OUT", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.num_images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 100, (args.num_images,), generator=generator)

    runs = [lambda: bench_okd(images, labels, device, args.batch_size, args.steps, args.warmup),
            lambda: bench_pil(images, labels, device, args.batch_size, args.steps, args.warmup, args.pil_workers)]
    results = []
    for run in runs:
        busy = wait_for_idle(args.wait_idle) if args.wait_idle else None
        load = load_average_1min()
        row = run()
        row.update({"cpu_busy_before": busy, "load_average_1min_before": load})
        results.append(row)
    base = results[1]["images_per_s"]
    for row in results:
        row["speedup_vs_pil"] = row["images_per_s"] / base
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "load_average_1min_after": load_average_1min(),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "num_images": args.num_images,
        "results": results,
    }
    print(f"device {report['device']} ({report['device_name']}), {report['cpu_count']} CPUs, torch {report['torch']} with "
          f"{report['torch_threads']} threads, batch {args.batch_size}, {args.steps} timed batches; 1-min load average after: "
          f"{_fmt(report['load_average_1min_after'], '.2f')}\n")
    print("| pipeline | images/s | ms/batch | speed-up | torch threads | 1-min load avg before | CPU busy before |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in results:
        ms = 1000 * row["seconds"] / args.steps
        print(f"| {row['pipeline']} | {row['images_per_s']:,.0f} | {ms:.2f} | {row['speedup_vs_pil']:.1f}x | {report['torch_threads']} | "
              f"{_fmt(row['load_average_1min_before'], '.2f')} | {_fmt(row['cpu_busy_before'], '.0%')} |")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
    return report


if __name__ == "__main__":
    main()
