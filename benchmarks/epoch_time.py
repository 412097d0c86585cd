"""Wall time of one full epoch (train + eval) of 4-peer MCL-OKD, okd's data path vs the per-image PIL one.

CIFAR-100-sized synthetic data (50,000 train / 10,000 test, 3x32x32, 100 classes), ResNet-32, batch
64, nce_k 256 (the CIFAR recipe), built through okd's recipe/data/method builders. Both variants run
the same training step (``okd.engine.step.train_step``) and the same evaluation
(``okd.engine.trainer.evaluate``, eval batch 500); only the data path differs:

* okd: the in-memory on-device loaders of ``okd.data`` (batched gather/crop/flip/normalise);
* pil: what the original code does: a Dataset of PIL images with torchvision's RandomCrop(32, 4),
  RandomHorizontalFlip, ToTensor, Normalize, through a DataLoader with --pil-workers processes
  (started afresh for the epoch, as a non-persistent DataLoader does), batches copied to the device.

    python benchmarks/epoch_time.py --device cuda
    python benchmarks/epoch_time.py --device cpu --limit-steps 40   # time 40 steps, extrapolate

With ``--limit-steps N`` only N training steps (after --warmup) and ceil(N/8) eval batches are
timed and the epoch time is extrapolated linearly to all 782 + 20 batches; the output says so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import as_batches, pil_loaders, sync, wait_for_idle  # noqa: E402
from train_throughput import build_case  # noqa: E402

from okd.data.batch import Batch  # noqa: E402
from okd.engine.step import train_step  # noqa: E402
from okd.engine.trainer import evaluate, step_seed  # noqa: E402


def run_epoch(case: dict[str, Any], train_batches: Iterator[Batch], eval_batches: Any, total_steps: int, total_eval: int,
              limit: int | None, warmup: int) -> dict[str, Any]:
    """Train for the epoch (or ``limit`` timed steps) and evaluate; times include waiting for data."""
    cfg, dev, method, forward = case["cfg"], case["device"], case["method"], case["forward"]
    forward.train()
    started = time.perf_counter()
    first_batch_s = None
    steps = timed = 0
    timed_start = started
    for step, batch in enumerate(train_batches):
        if first_batch_s is None:
            first_batch_s = time.perf_counter() - started  # worker start-up + first batch for PIL
        if limit is not None and step == warmup:
            sync(dev)
            timed_start = time.perf_counter()
        train_step(forward, method, case["optimizer"], batch, 0, device=dev, amp=case["amp"], seed=step_seed(cfg.seed, 0, step, 0))
        steps += 1
        if limit is not None and step >= warmup:
            timed += 1
            if timed >= limit:
                break
    sync(dev)
    end = time.perf_counter()
    if limit is None:
        train_s, how = end - started, "measured"
    else:
        per_step = (end - timed_start) / max(timed, 1)
        train_s, how = first_batch_s + per_step * (total_steps - 1), f"extrapolated from {timed} timed steps"
    eval_limit = None if limit is None else max(1, math.ceil(limit / 8))
    sync(dev)
    began = time.perf_counter()
    evaluate(method, forward, eval_batches, dev, case["amp"], eval_limit)
    sync(dev)
    eval_s = time.perf_counter() - began
    eval_done = total_eval if eval_limit is None else min(eval_limit, total_eval)
    eval_s *= total_eval / eval_done
    return {"train_seconds": train_s, "eval_seconds": eval_s, "epoch_seconds": train_s + eval_s, "how": how,
            "steps_run": steps, "first_batch_seconds": first_batch_s, "eval_batches_timed": eval_done}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-peers", type=int, default=4)
    parser.add_argument("--arch", default="resnet32")
    parser.add_argument("--num-train", type=int, default=50_000)
    parser.add_argument("--num-test", type=int, default=10_000)
    parser.add_argument("--limit-steps", type=int, default=None, metavar="N", help="time only N training steps and extrapolate the epoch")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before the N timed ones (with --limit-steps; default 3)")
    parser.add_argument("--pil-workers", type=int, default=2, help="DataLoader processes of the PIL variant (default 2)")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--channels-last", dest="channels_last", action="store_const", const=True, default=None)
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--skip-pil", action="store_true", help="only the okd data path")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="S", help="wait up to S s for an idle CPU before each variant")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    variants = ["okd"] + ([] if args.skip_pil else ["pil"])
    results = []
    for variant in variants:
        busy = wait_for_idle(args.wait_idle) if args.wait_idle else None
        case = build_case("mcl_okd", args.arch, batch_size=args.batch_size, num_peers=args.num_peers, device=args.device,
                          num_train=args.num_train, num_test=args.num_test, eval_batch_size=500, amp=args.amp,
                          compile=args.compile, channels_last=args.channels_last)
        total_steps, total_eval = len(case["train_loader"]), len(case["eval_loader"])
        if variant == "okd":
            train_batches = case["train_loader"].epoch(0)
            eval_batches = case["eval_loader"]
            label = "okd: in-memory, batched on-device augmentation"
        else:
            train_dl, test_dl = pil_loaders(case, args.pil_workers, args.batch_size, 500)
            train_batches, eval_batches = as_batches(train_dl, case["device"]), _EvalView(test_dl, case["device"])
            label = f"original-style: PIL + torchvision transforms, DataLoader with {args.pil_workers} workers"
        row = run_epoch(case, train_batches, eval_batches, total_steps, total_eval, args.limit_steps, args.warmup)
        row.update({"variant": variant, "pipeline": label, "train_steps": total_steps, "eval_batches": total_eval, "cpu_busy_before": busy})
        results.append(row)
        del case, train_batches, eval_batches

    dev = torch.device(args.device)
    report = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "load_average_after": os.getloadavg(), "args": vars(args), "results": results,
    }
    note = "measured" if args.limit_steps is None else f"EXTRAPOLATED from {args.limit_steps} timed steps (after {args.warmup} warm-up)"
    print(f"one epoch of MCL-OKD {args.arch} x{args.num_peers}, batch {args.batch_size}, {args.num_train:,} train / {args.num_test:,} test "
          f"synthetic images on {report['device']} ({report['device_name']}, {report['cpu_count']} CPUs, torch {report['torch']}, "
          f"{report['threads']} threads); {note}; load average after: {', '.join(f'{x:.1f}' for x in report['load_average_after'])}\n")
    print("| data path | train s | eval s | epoch s | img/s (train) |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['pipeline']} | {r['train_seconds']:,.1f} | {r['eval_seconds']:,.1f} | {r['epoch_seconds']:,.1f} | "
              f"{args.num_train / r['train_seconds']:,.0f} |")
    if len(results) == 2:
        print(f"\nokd epoch is {results[1]['epoch_seconds'] / results[0]['epoch_seconds']:.2f}x faster than the PIL pipeline's")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return report


class _EvalView:
    """A re-iterable, len()-able view of a DataLoader as Batches (what ``evaluate`` iterates)."""

    def __init__(self, loader: Any, device: torch.device) -> None:
        self.loader, self.device = loader, device

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        return as_batches(self.loader, self.device)


if __name__ == "__main__":
    main()
