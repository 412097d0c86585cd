"""``okd eval``: the errors of every peer, the peer mean, the deployed head, the ensemble and the method's extra heads."""

from __future__ import annotations

import argparse
import json
import os
import sys

from okd.cli.tables import format_table
from okd.engine.checkpoint_path import resolve_checkpoint
from okd.plugins import add_plugin_argument, import_plugins


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint on its test set",
                       description="Evaluate a checkpoint written by `okd train` (best.pt or last.pt).")
    p.add_argument("--checkpoint", required=True, help="a run folder (its best.pt is used) or best.pt / last.pt")
    p.add_argument("--dataset", help="evaluate on another dataset with the same classes (default: the training one)")
    p.add_argument("--data", help="dataset location, if it moved since training; for --dataset folder any folder "
                   "whose val/<class> names are among the run's classes (labels follow the names)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, help="evaluation batch size")
    p.add_argument("--limit-batches", type=int, help="evaluate at most N batches")
    p.add_argument("--workers", type=int, help="image-decoding worker processes for folder/ImageNet data "
                   "(default: the run's, at most this machine's cores)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    add_plugin_argument(p, "; the run's own plugins are imported anyway")
    p.set_defaults(run=run_eval)


def evaluate_checkpoint(path: str, data: str | None = None, device: str = "auto", batch_size: int | None = None,
                        limit_batches: int | None = None, dataset: str | None = None, workers: int | None = None) -> dict:
    """The errors of every peer, the peer mean, the deployed peer and the ensemble (``okd eval``, ``okd.evaluate``)."""
    from okd.engine.checkpoint import load_checkpoint, state_dict_mismatch
    from okd.engine.config import check_positive, config_from_mapping, replace
    from okd.engine.distributed import current
    from okd.engine.trainer import build_for_config, evaluate, resolve_device
    from okd.errors import OKDUserError

    check_positive("limit_batches", limit_batches)  # 0 would report 100% error having evaluated nothing
    check_positive("batch_size", batch_size)
    if workers is not None and workers < 0:
        raise OKDUserError(f"--workers must be 0 (decode in the main process) or more, got {workers}")
    dev = resolve_device(device)
    path = str(resolve_checkpoint(path)[0])  # a run folder: its best.pt
    state = load_checkpoint(path)
    cfg = config_from_mapping(state["config"])
    import_plugins(cfg.plugins)
    changes = {"download": False, "device": device, "pretrained": False}  # the weights come from the checkpoint
    if dataset is not None:
        from okd.data import DATASETS

        if dataset not in DATASETS:
            raise OKDUserError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
        changes["dataset"] = dataset
    if data is not None:
        changes["data"] = data
    if batch_size is not None:
        changes["eval_batch_size"] = batch_size
    changes["workers"] = workers if workers is not None else min(int(cfg.workers), os.cpu_count() or 1)
    cfg = replace(cfg, **changes)
    spec, _train, eval_loader, method = build_for_config(cfg, dev, current(), state.get("data"), eval_only=True)
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise OKDUserError(
            f"checkpoint {path} does not fit the {cfg.method} {cfg.arch} model its config and the data "
            f"({spec.num_classes} classes) describe: {state_dict_mismatch(exc)}"
        ) from None
    errors = evaluate(method, method, eval_loader, dev, limit=limit_batches)
    return {"checkpoint": str(path), "method": cfg.method, "arch": cfg.arch, "dataset": cfg.dataset,
            "epoch": state["epoch"], "deployed_peer": method.deployed_peer, "deployed_head": method.deployed_head,
            "peer_archs": list(method.backbone_names),
            "errors": errors}


def head_label(head: str, peer_archs: list[str]) -> str:
    """``peer1`` -> ``peer1 (resnet110)`` when the peers are different backbones; other heads unchanged."""
    index = head[len("peer"):]
    if len(set(peer_archs)) > 1 and head.startswith("peer") and index.isdigit() and int(index) < len(peer_archs):
        return f"{head} ({peer_archs[int(index)]})"
    return head


def run_eval(args: argparse.Namespace) -> int:
    import_plugins(args.plugins)
    checkpoint, note = resolve_checkpoint(args.checkpoint)
    if note is not None:
        print(f"okd eval: {note}", file=sys.stderr)
    result = evaluate_checkpoint(str(checkpoint), args.data, args.device, args.batch_size, args.limit_batches, args.dataset,
                                 args.workers)
    if args.format == "json":
        print(json.dumps(result, indent=2))
        return 0
    from okd.models import arch_label

    print(f"{result['method']} {arch_label(result['arch'])} on {result['dataset']} after {result['epoch']} epochs "
          f"(deployed: {result['deployed_head']})")
    rows = [[head_label(head, result["peer_archs"]), f"{e['top1']:.2f}", f"{e['top5']:.2f}"]
            for head, e in result["errors"].items()]
    print(format_table(["head", "top-1 error %", "top-5 error %"], rows))
    return 0
