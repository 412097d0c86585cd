"""Is DML's divergence on a small image folder okd's bug? Train with the original script's DML loss instead.

The original ``main_cifar_dml.py`` computes, per batch, CE of every peer plus, for every ordered pair
i != j, ``kl_div(log_softmax(z_i / T), softmax(z_j.detach() / T), batchmean) * T^2 / (N - 1)`` (T = 2), and
steps SGD (nesterov, momentum 0.9, wd 5e-4) at a lr set once per epoch by its cosine. This script
writes that loop by hand around okd's data and cohort (same images, same initial weights), takes the
step on the original loss, and at every step also evaluates okd's ``DML.losses`` on the same logits:
the printed ``max |okd - original|`` shows the two losses agree, and the per-epoch loss and test error
show what the original loss does at the given lr and batch size. ``--warmup-epochs`` adds okd's linear
warm-up (engine/schedule.py) to the same loop.

    python benchmarks/dml_reference_loss.py --data DIR --run-epochs 8 --batch-size 128 --lr 0.1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import run_script  # noqa: E402


def original_dml_loss(logits: list[torch.Tensor], targets: torch.Tensor, T: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE sum, pairwise KL sum) in the original script's formulation: softmax targets, not log targets."""
    ce = sum(F.cross_entropy(z, targets) for z in logits)
    n = len(logits)
    kd = sum(
        F.kl_div(F.log_softmax(logits[i] / T, dim=1), F.softmax(logits[j].detach() / T, dim=1), reduction="batchmean") * T * T / (n - 1)
        for i in range(n) for j in range(n) if i != j
    )
    return ce, kd


def run(args: argparse.Namespace) -> list[dict[str, float]]:
    from okd.engine import distributed as okd_dist
    from okd.engine.options import train_config
    from okd.engine.schedule import learning_rate, warmup_factor
    from okd.engine.trainer import build_for_config, evaluate

    cfg = train_config({"method": "dml", "arch": args.arch, "data": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
                        "lr": args.lr, "warmup_epochs": args.warmup_epochs, "workers": 0, "device": "cpu", "seed": args.seed})
    device = torch.device("cpu")
    spec, train_loader, eval_loader, method = build_for_config(cfg, device, okd_dist.DistInfo(0, 1, 0))
    optimizer = torch.optim.SGD(method.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.wd, nesterov=True)
    steps = len(train_loader)
    print(f"dataset {cfg.dataset}: {spec.num_train} train / {spec.num_test} test, {spec.num_classes} classes; "
          f"{cfg.num_peers} x {cfg.arch}, batch {cfg.batch_size}, lr {cfg.lr}, warm-up {cfg.warmup_epochs} epochs, {steps} steps/epoch")
    rows = []
    for epoch in range(min(cfg.epochs, args.run_epochs or cfg.epochs)):
        lr = learning_rate(epoch, cfg.lr, cfg.epochs)
        method.train()
        sums, gap = {"ce": 0.0, "kd": 0.0}, 0.0
        for step, batch in enumerate(train_loader.epoch(epoch)):
            for group in optimizer.param_groups:
                group["lr"] = lr * warmup_factor(epoch, step, steps, cfg.warmup_epochs or 0)
            output = method(batch.images)
            ce, kd = original_dml_loss(output.logits, batch.targets, cfg.kd_t or 2.0)
            with torch.no_grad():
                ours = sum(method.losses(output, batch, epoch).values())
                gap = max(gap, abs(float(ours) - float(ce + kd)))
            optimizer.zero_grad()
            (ce + kd).backward()
            optimizer.step()
            sums["ce"] += float(ce.detach()) / steps
            sums["kd"] += float(kd.detach()) / steps
        errors = evaluate(method, method, eval_loader, device)
        row = {"epoch": epoch + 1, "lr": lr, **sums, "max_gap": gap, "peer_mean_error": errors["peer_mean"]["top1"]}
        rows.append(row)
        print(f"epoch {epoch + 1:3d}  lr {lr:.4f}  loss {sums['ce'] + sums['kd']:9.4f} (CE {sums['ce']:.4f}, KL {sums['kd']:.4f})  "
              f"max |okd - original| {gap:.2e}  peer-mean test error {row['peer_mean_error']:.2f}%", flush=True)
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="an image folder with train/ and val/ (or any --data okd infers)")
    p.add_argument("--arch", default="resnet32")
    p.add_argument("--epochs", type=int, default=300, help="length of the cosine schedule (the recipe's 300)")
    p.add_argument("--run-epochs", type=int, help="stop after this many epochs (default: all)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--warmup-epochs", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    run_script(main, "dml_reference_loss")
