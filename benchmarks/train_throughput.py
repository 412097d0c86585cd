"""Training throughput (images/s) and peak memory of every method, through okd's own training step.

Each (method, backbone) runs in a fresh child process (a clean memory high-water mark, no state
carried between cases): the config goes through okd's recipe, data and method builders exactly as
``okd train`` does (synthetic CIFAR-shaped data, 100 classes, on the training device; MCL-OKD with
the CIFAR nce_k of the backbone), and the timed loop is the engine's own step
(``okd.engine.step.train_step``: per-step RNG reseed, forward, losses, backward, SGD, the method's
post-step update) plus the engine's per-step bookkeeping, with batches drawn from okd's loader
inside the timed region. The loader alone is timed too (the "data pipeline" table: img/s and peak
memory of drawing batches, no model work), before the step, in the same process.

``--no-data`` times the same step on one pre-made batch already on the device (drawn from okd's
loader once, before timing), so the figure is the model's forward + losses + backward + SGD alone:
the "bare model" figure (with ``--methods baseline``) that the data-included one is compared with.

    python benchmarks/train_throughput.py --device cpu --batch-size 64 --json out.json
    python benchmarks/train_throughput.py --methods baseline --batch-size 64 --no-data            # bare model
    python benchmarks/train_throughput.py --archs resnet32 resnet110 densenet40_12 vgg16 hcgnet_a1 --steps 10

``--original-style`` also times, for every case, what the original implementation does on the same
model and step: per-image PIL transforms (RandomCrop(32, 4), flip, ToTensor, Normalize) through a
DataLoader with ``--pil-workers`` processes, batches copied to the device, the per-parameter SGD
loop, contiguous (not channels_last) tensors, one ``.item()`` per loss term and step (its loss
meters), and for MCL-OKD one bank gather per ordered pair of peers
(``multiview_nce_loss_pairwise``). The speed-up column is okd over that, measured in the same run.

img/s is the median over the timed steps (per-step times; robust to a loaded machine), "best" the
fastest step. Peak memory, for the step and for the data pipeline alike:
``torch.cuda.max_memory_allocated`` over the timed steps on CUDA; on CPU the child process's
resident high-water mark (VmHWM: Python, torch, dataset and model included, reset via
/proc/self/clear_refs); beside it, its growth over the timed steps. The data pipeline's table also
gives the size of the image store okd keeps on the device.

Bad input (an unknown backbone, ``--device cuda`` without a GPU) is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from okd.errors import OKDUserError

ORIGINAL_METHODS = ("baseline", "dml", "cl_ilr", "one", "okddip", "mcl_okd")
METHODS = (*ORIGINAL_METHODS, "kdcl", "pcl", "mcl", "lmcl")

# Figures quoted by issue 8 for the original implementation "on a 2-core machine" (torch 2.14, batch
# 64, resnet32, 4 peers). Printed for orientation only: the speed-up column compares with the
# original-style step measured in the same run (--original-style), never with these.
REFERENCE_CPU_IMG_S = {"baseline": 610, "dml": 225, "cl_ilr": 285, "one": 355, "okddip": 365, "mcl_okd": 212}


def _status_kib(field: str) -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _reset_hwm() -> None:
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def recipe_batch_size(method: str) -> int:
    """The CIFAR-100 recipe's batch for ``method`` (what ``okd train --dataset cifar100`` uses)."""
    from okd.engine.recipe import _optimisation_recipe

    return int(_optimisation_recipe(method, "cifar100")["batch_size"])


def build_case(
    method: str,
    arch: str,
    *,
    batch_size: int,
    num_peers: int,
    device: str,
    num_train: int,
    num_test: int = 500,
    eval_batch_size: int = 500,
    amp: bool = False,
    compile: bool = False,
    channels_last: bool | None = None,
    sgd_impl: str = "auto",
    share: str | None = None,
    image_size: int = 32,
) -> dict[str, Any]:
    """Config, loaders, method, optimiser and forward module, built as the Trainer builds them."""
    from okd.engine import distributed as okd_dist
    from okd.engine.config import TrainConfig
    from okd.engine.recipe import NCE_K_BY_BACKBONE, resolve_config
    from okd.engine.step import make_optimizer
    from okd.engine.trainer import build_for_config, resolve_device

    cfg = resolve_config(
        TrainConfig(
            method=method,
            arch=arch,
            num_peers=1 if method == "baseline" else num_peers,
            share=share,
            synthetic_size=image_size,
            dataset="synthetic",
            synthetic_train=num_train,
            synthetic_test=num_test,
            synthetic_classes=100,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            lr=0.05 if method == "mcl_okd" else 0.1,
            wd=5e-4,
            nce_k=NCE_K_BY_BACKBONE.get(arch, 256) if method == "mcl_okd" else None,
            device=device,
            amp=amp,
            compile=compile,
            channels_last=channels_last,
            sgd_impl=sgd_impl,
        )
    )
    dev = resolve_device(cfg.device)
    spec, train_loader, eval_loader, model = build_for_config(cfg, dev, okd_dist.DistInfo())
    optimizer = make_optimizer(
        model.trainable_parameters(), dev, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.wd, impl=cfg.sgd_impl
    )
    forward = torch.compile(model) if cfg.compile else model
    return {"cfg": cfg, "device": dev, "spec": spec, "train_loader": train_loader, "eval_loader": eval_loader,
            "method": model, "optimizer": optimizer, "forward": forward, "amp": cfg.amp and dev.type == "cuda"}


def make_original_style(case: dict[str, Any], workers: int) -> None:
    """Turn a built case into the original implementation's way of running the same step (in place)."""
    from epoch_time import _as_batches, pil_loaders

    from okd.losses.contrastive import multiview_nce_loss_pairwise

    method = case["method"]
    if case["cfg"].method == "mcl_okd":
        def per_pair(embeddings: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
            from okd.losses.negatives import contrast_indices

            idx = contrast_indices(indices, method.class_index(), method.nce_k)
            return multiview_nce_loss_pairwise(method.memory, embeddings, idx, method.nce_t, method.num_data)

        method.mcl_loss = per_pair
    train_dl, _ = pil_loaders(case, workers, case["cfg"].batch_size, case["cfg"].eval_batch_size)

    class Loader:
        def epoch(self, epoch: int):
            return _as_batches(train_dl, case["device"])

    case["train_loader"] = Loader()
    case["item_per_step"] = True


def batches(loader: Any, epoch: int = 0):
    """Endless (epoch, step, batch) over the loader's epochs."""
    while True:
        for step, batch in enumerate(loader.epoch(epoch)):
            yield epoch, step, batch
        epoch += 1


def time_training(case: dict[str, Any], steps: int, warmup: int, profile: int = 0) -> dict[str, Any]:
    """Per-step wall times of the engine's step (data drawn inside the timed region)."""
    from okd.engine.step import train_step
    from okd.engine.trainer import _EpochSums, step_seed

    cfg, dev, method = case["cfg"], case["device"], case["method"]
    case["forward"].train()
    stream = batches(case["train_loader"])
    sums = _EpochSums()
    first_bad = torch.full((), -1, dtype=torch.long, device=dev)

    def one_step() -> int:
        nonlocal first_bad
        epoch, step, batch = next(stream)
        result = train_step(case["forward"], method, case["optimizer"], batch, epoch, device=dev, amp=case["amp"],
                            seed=step_seed(cfg.seed, epoch, step, 0), step=step)  # step: L-MCL's meta step every 50
        first_bad = torch.where((first_bad < 0) & ~result.finite, torch.tensor(step, device=dev), first_bad)
        if case.get("item_per_step"):
            [value.item() for value in result.losses.values()]  # the original's per-step loss meters
        sums.add(result.losses, result.total, batch.targets.shape[0])
        return batch.targets.shape[0]

    for _ in range(warmup):
        one_step()
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = _status_kib("VmRSS") / 1024
    _reset_hwm()
    times, images = [], 0
    for _ in range(steps):
        start = time.perf_counter()
        images += one_step()
        _sync(dev)  # a no-op on CPU; on CUDA it makes per-step times honest
        times.append(time.perf_counter() - start)
    result: dict[str, Any] = {
        "steps": steps,
        "images": images,
        "seconds": sum(times),
        "img_s_median": images / steps / statistics.median(times),
        "img_s_mean": images / sum(times),
        "img_s_best": images / steps / min(times),
        "ms_per_step_median": 1000 * statistics.median(times),
        "final_loss": float(sums.terms["total"].item() / sums.steps),
        "nonfinite": int(first_bad.item()) >= 0,
    }
    if dev.type == "cuda":
        result["peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        result["peak_mb"] = _status_kib("VmHWM") / 1024
        result["step_growth_mb"] = max(result["peak_mb"] - rss_before, 0.0)
    if profile:
        from torch.profiler import ProfilerActivity, profile as torch_profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with torch_profile(activities=activities) as prof:
            for _ in range(profile):
                one_step()
            _sync(dev)
        sort = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        result["profile"] = prof.key_averages().table(sort_by=sort, row_limit=25)
    return result


def time_data(case: dict[str, Any], steps: int, warmup: int) -> dict[str, Any]:
    """The loader alone (gather, crop, flip, normalise on the training device): img/s and peak memory."""
    dev = case["device"]
    loader = case["train_loader"]
    stream = batches(loader)
    for _ in range(warmup):
        next(stream)
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before_mb = torch.cuda.memory_allocated(dev) / 2**20
    else:
        before_mb = _status_kib("VmRSS") / 1024
        _reset_hwm()
    times, images = [], 0
    for _ in range(steps):
        start = time.perf_counter()
        images += next(stream)[2].targets.shape[0]
        _sync(dev)
        times.append(time.perf_counter() - start)
    peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else _status_kib("VmHWM") / 1024
    store = getattr(loader, "images", None)
    return {"steps": steps, "images": images, "img_s_median": images / steps / statistics.median(times),
            "img_s_best": images / steps / min(times), "ms_per_step_median": 1000 * statistics.median(times),
            "peak_mb": peak_mb, "growth_mb": max(peak_mb - before_mb, 0.0),
            "store_mb": store.numel() * store.element_size() / 2**20 if isinstance(store, torch.Tensor) else None}


class FixedBatch:
    """A loader that yields one pre-made, on-device batch again and again (``--no-data``)."""

    def __init__(self, loader: Any) -> None:
        self.batch = next(iter(loader.epoch(0)))
        self.length = len(loader)

    def __len__(self) -> int:
        return self.length

    def epoch(self, epoch: int):
        return itertools.repeat(self.batch, self.length)


def run_case(args: argparse.Namespace, method: str, arch: str) -> dict[str, Any]:
    """One (method, arch) measurement in this process."""
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch_size or recipe_batch_size(method)
    built = time.perf_counter()
    case = build_case(method, arch, batch_size=batch, num_peers=args.num_peers, device=args.device, num_train=args.num_train,
                      amp=args.amp, compile=args.compile, channels_last=args.channels_last, sgd_impl=args.sgd_impl)
    row: dict[str, Any] = {"method": method, "arch": arch, "batch": batch, "peers": case["method"].num_peers,
                           "build_seconds": time.perf_counter() - built, "threads": torch.get_num_threads()}
    row["data_only"] = time_data(case, args.steps, args.warmup)  # first: the step's memory does not mask the loader's
    if args.no_data:
        case["train_loader"] = FixedBatch(case["train_loader"])
    row["no_data"] = bool(args.no_data)
    row.update(time_training(case, args.steps, args.warmup, args.profile))
    if args.original_style and method in ORIGINAL_METHODS:  # the original code has only the paper's methods
        del case
        original = build_case(method, arch, batch_size=batch, num_peers=args.num_peers, device=args.device,
                              num_train=args.num_train, channels_last=False, sgd_impl="loop")
        make_original_style(original, args.pil_workers)
        row["original_style"] = time_training(original, args.steps, args.warmup)
    return row


def _child(args: argparse.Namespace, method: str, arch: str) -> dict[str, Any]:
    """Run one case in a fresh interpreter and read its JSON back."""
    cmd = [sys.executable, __file__, "--_case", f"{method}:{arch}"] + args.forward_argv
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode == 2 and proc.stderr.strip():
        raise OKDUserError(proc.stderr.strip().splitlines()[-1].split("error: ", 1)[-1])
    if proc.returncode != 0:
        raise SystemExit(f"case {method}/{arch} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _reference(row: dict[str, Any], args: argparse.Namespace) -> float | None:
    comparable = args.device == "cpu" and row["arch"] == "resnet32" and row["batch"] == 64 and (row["peers"] == 4 or row["method"] == "baseline")
    return REFERENCE_CPU_IMG_S.get(row["method"]) if comparable else None


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    cuda = args.device.startswith("cuda")
    mem = "peak alloc MB (CUDA)" if cuda else "peak RSS MB (step growth)"
    step = "step on one pre-made batch (--no-data): " if args.no_data else ""
    lines = [f"| method | arch | peers | batch | {step}img/s (median) | best | ms/step | {mem} | original-style img/s (measured) "
             "| speed-up | issue 8's original img/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ref = _reference(r, args)
        orig = r.get("original_style")
        measured = f"{orig['img_s_median']:,.0f}" if orig else "—"
        speedup = f"{r['img_s_median'] / orig['img_s_median']:.2f}x" if orig else "—"
        peak = f"{r['peak_mb']:,.0f}" + (f" (+{r['step_growth_mb']:,.0f})" if "step_growth_mb" in r else "")
        lines.append(
            f"| {r['method']} | {r['arch']} | {r['peers']} | {r['batch']} | {r['img_s_median']:,.0f} | {r['img_s_best']:,.0f} | "
            f"{r['ms_per_step_median']:.1f} | {peak} | {measured} | {speedup} | {ref or '—'} |"
        )
    data_rows = [r for r in rows if "data_only" in r]
    if data_rows:
        dmem = "peak alloc MB (growth)" if cuda else "peak RSS MB (growth)"
        lines += ["", f"| data pipeline (okd loader, no model work) | batch | img/s (median) | ms/batch | {dmem} | image store MB |",
                  "|---|---:|---:|---:|---:|---:|"]
        seen = set()
        for r in data_rows:
            if r["batch"] in seen:
                continue
            seen.add(r["batch"])
            d = r["data_only"]
            store = f"{d['store_mb']:,.0f}" if d.get("store_mb") is not None else "—"
            lines.append(f"| synthetic {args.num_train:,} x 3x32x32 on {args.device} | {r['batch']} | {d['img_s_median']:,.0f} | "
                         f"{d['ms_per_step_median']:.2f} | {d['peak_mb']:,.0f} (+{d['growth_mb']:,.0f}) | {store} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD",
                        help=f"methods to time (default: all: {' '.join(METHODS)})")
    parser.add_argument("--archs", nargs="+", default=["resnet32"], help="backbones (default resnet32)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch for every method (default: each method's CIFAR-100 recipe batch: 128, MCL-OKD 64)")
    parser.add_argument("--num-peers", type=int, default=4, help="peers of the OKD methods (baseline: always 1; default 4)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per case (default 30)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (default 5)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (default cpu)")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only, as the engine)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the cohort")
    parser.add_argument("--channels-last", dest="channels_last", action="store_const", const=True, default=None,
                        help="channels_last memory format (default: the engine's: on)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_const", const=False)
    parser.add_argument("--sgd-impl", default="auto", help="auto | fused | foreach | loop (default auto: fused on CUDA, foreach on CPU)")
    parser.add_argument("--num-train", type=int, default=50_000, help="synthetic training images held in memory (default 50,000)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice, = cores)")
    parser.add_argument("--data-only", action="store_true", help=argparse.SUPPRESS)  # kept for old commands: the loader is always timed now
    parser.add_argument("--no-data", action="store_true",
                        help="time the step on one pre-made batch already on the device (the bare model's figure; no data loading)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="also profile N steps with torch.profiler and print the top ops")
    parser.add_argument("--wait-idle", type=float, default=0, metavar="S",
                        help="before each case wait up to S seconds for the CPU to be idle (shared machines; default 0: don't)")
    parser.add_argument("--original-style", action="store_true",
                        help="also time the original implementation's way of running each case (PIL DataLoader, per-pair MCL, ...)")
    parser.add_argument("--pil-workers", type=int, default=2, help="DataLoader processes of --original-style (default 2)")
    parser.add_argument("--json", metavar="OUT", help="also write all figures to this JSON file")
    parser.add_argument("--_case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    raw = list(sys.argv[1:] if argv is None else argv)
    args.forward_argv = [a for a in raw if not a.startswith("--_case")]
    return args


def validate(args: argparse.Namespace) -> None:
    """Fail fast, in the parent, on input every child would reject (one line, exit 2)."""
    from okd.engine.trainer import resolve_device
    from okd.models.registry import resolve_backbone_name  # importing okd.models registers every backbone

    args.archs = [resolve_backbone_name(arch) for arch in args.archs]
    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise OKDUserError(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    resolve_device(args.device)
    for name in ("steps", "num_train", "num_peers"):
        if getattr(args, name) < 1:
            raise OKDUserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0 or (args.batch_size is not None and args.batch_size < 1):
        raise OKDUserError("--warmup must be >= 0 and --batch-size >= 1")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    try:
        return _main(argv)
    except OKDUserError as exc:
        print(f"train_throughput.py: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _main(argv: list[str] | None) -> dict[str, Any]:
    args = parse_args(argv)
    if args._case:
        method, arch = args._case.split(":")
        print(json.dumps(run_case(args, method, arch)))
        return {}
    validate(args)
    rows = []
    for arch in args.archs:
        for method in args.methods:
            busy = wait_for_idle(args.wait_idle) if args.wait_idle else None
            row = _child(args, method, arch)
            row["cpu_busy_before"] = busy
            rows.append(row)
            print(f"  {method}/{arch}: {row['img_s_median']:,.0f} img/s (data pipeline {row['data_only']['img_s_median']:,.0f} img/s)",
                  file=sys.stderr, flush=True)
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    dev = torch.device(args.device)
    report = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "threads": rows[0]["threads"] if rows else None,
        "load_average_after": load,
        "args": {k: v for k, v in vars(args).items() if k not in ("forward_argv", "_case")},
        "reference_cpu_img_s": REFERENCE_CPU_IMG_S,
        "results": rows,
    }
    print(f"device {report['device']} ({report['device_name']}), {report['cpu_count']} CPUs, torch {report['torch']} "
          f"({report['threads']} threads), {args.steps} timed steps after {args.warmup} warm-up, {args.num_train:,} synthetic "
          f"training images; load average after the run: {', '.join(f'{x:.1f}' for x in load) if load else 'n/a'}\n")
    print(table(rows, args))
    for r in rows:
        if "profile" in r:
            print(f"\n### profile {r['method']}/{r['arch']}\n{r['profile']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
