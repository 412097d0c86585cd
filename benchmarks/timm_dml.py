"""DML on a timm model: okd's training step beside a plain, hand-written two-network DML loop.

What a user would otherwise write: two ``timm.create_model(NAME)`` networks, one SGD each, and per
step a forward of both, cross-entropy plus T^2 * KL to the other network's detached softened
prediction (T = 2, okd's DML), one backward and both optimiser steps. okd runs the same model through
its own engine step (``okd.engine.step.train_step``: batches drawn and augmented by okd's loader inside
the timed region, per-step reseed, channels_last, foreach SGD) with 4 peers, and with 2 peers for a
like-for-like comparison. The plain loop trains on one pre-made batch, so it pays for no data pipeline.

Reported per case: images per second (batch images / step time, median over the timed steps) and
network-images per second (that times the number of networks: the work a cohort of N peers does).

    python benchmarks/timm_dml.py --model resnet18 --batch-size 32 --image-size 32 --steps 10 --json out.json

Needs timm (``pip install 'okd-torch[timm]'``). Bad input (an unknown model, ``--device cuda`` without a
GPU) is one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import run_script, sync  # noqa: E402
from okd.errors import OKDUserError  # noqa: E402


def plain_dml(model: str, *, batch_size: int, image_size: int, classes: int, device: torch.device,
              steps: int, warmup: int, kd_t: float = 2.0) -> dict[str, Any]:
    """The hand-written loop: two timm networks, joint step on detached mutual targets."""
    import timm

    torch.manual_seed(0)
    nets = [timm.create_model(model, pretrained=False, num_classes=classes).to(device).train() for _ in range(2)]
    optimizers = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4) for n in nets]
    images = torch.randn(batch_size, 3, image_size, image_size, device=device)
    targets = torch.randint(0, classes, (batch_size,), device=device)

    def one_step() -> None:
        logits = [net(images) for net in nets]
        loss = 0.0
        for i, z in enumerate(logits):
            other = logits[1 - i].detach()
            kl = F.kl_div(F.log_softmax(z / kd_t, 1), F.softmax(other / kd_t, 1), reduction="batchmean")
            loss = loss + F.cross_entropy(z, targets) + kd_t**2 * kl
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()

    for _ in range(warmup):
        one_step()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        one_step()
        sync(device)
        times.append(time.perf_counter() - start)
    return _figures(times, batch_size, networks=2)


def okd_dml(model: str, *, peers: int, share: str, batch_size: int, image_size: int, device: str,
            steps: int, warmup: int) -> dict[str, Any]:
    """okd's own step on the same model (synthetic CIFAR-shaped data, 100 classes, okd's loader)."""
    from train_throughput import build_case, time_training

    case = build_case("dml", f"timm:{model}", batch_size=batch_size, num_peers=peers, device=device,
                      num_train=max(batch_size * (steps + warmup), 512), share=share, image_size=image_size)
    result = time_training(case, steps, warmup)
    figures = {"img_s": result["img_s_median"], "network_img_s": result["img_s_median"] * peers,
               "ms_per_step": result["ms_per_step_median"], "networks": peers}
    return figures


def _figures(times: list[float], batch_size: int, networks: int) -> dict[str, Any]:
    median = statistics.median(times)
    return {"img_s": batch_size / median, "network_img_s": batch_size * networks / median,
            "ms_per_step": 1000 * median, "networks": networks}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet18", help="timm model name (default resnet18)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=32, help="square input side (default 32, CIFAR-sized)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per case (default 10)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu (default) | cuda | cuda:N")
    p.add_argument("--json", help="also write the figures to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from okd.engine.trainer import resolve_device

    for name in ("batch_size", "image_size", "steps"):
        if getattr(args, name) < 1:
            raise OKDUserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    device = resolve_device(args.device)
    try:
        import timm
    except ImportError:
        raise OKDUserError("this benchmark needs timm: pip install 'okd-torch[timm]'") from None
    if not timm.is_model(args.model):
        raise OKDUserError(f"unknown timm model {args.model!r}")
    common = {"batch_size": args.batch_size, "image_size": args.image_size, "steps": args.steps, "warmup": args.warmup}
    rows = {
        "plain loop, 2 networks": plain_dml(args.model, classes=100, device=device, **common),
        "okd dml, 2 peers (share none)": okd_dml(args.model, peers=2, share="none", device=str(device), **common),
        "okd dml, 4 peers (share none)": okd_dml(args.model, peers=4, share="none", device=str(device), **common),
        "okd dml, 4 peers (share early)": okd_dml(args.model, peers=4, share="early", device=str(device), **common),
    }
    print(f"DML on timm:{args.model}, batch {args.batch_size}, {args.image_size}px, {device}, "
          f"{torch.get_num_threads()} threads, median of {args.steps} steps")
    print("| case | networks | img/s | network-img/s | ms/step |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['networks']} | {r['img_s']:.1f} | {r['network_img_s']:.1f} | {r['ms_per_step']:.1f} |")
    result = {"model": args.model, "batch_size": args.batch_size, "image_size": args.image_size, "device": str(device),
              "threads": torch.get_num_threads(), "cases": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    run_script(main, "timm_dml")
