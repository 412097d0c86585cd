"""``okd eval``: the errors of every peer, the peer mean, the deployed head, the ensemble and the method's extra heads."""

from __future__ import annotations

import argparse
import json
import sys

from okd.common.tables import format_table
from okd.engine.checkpoint_path import resolve_checkpoint
from okd.plugins import add_plugin_argument, import_plugins
from okd.report.evaluate import evaluate_checkpoint


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
    add_plugin_argument(p, "; needed for a run trained with plugins: a checkpoint never imports them by itself")
    p.set_defaults(run=run_eval)


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
                                 args.workers, args.plugins)
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
