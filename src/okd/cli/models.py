"""``okd models``: every backbone's parameters and multiply-adds, optionally as a cohort."""

from __future__ import annotations

import argparse
import json

from okd.cli.tables import format_table
from okd.plugins import add_plugin_argument, import_plugins

from okd.models import SHARE_MODES, Cohort, count_macs, count_params, create_backbone, list_backbones, resolve_backbone_name


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list backbones with parameters and multiply-adds",
                       description="Parameters and multiply-adds (conv + linear weight MACs per image, the paper's 'FLOPs').")
    p.add_argument("--arch", action="append", help="only these backbones (repeatable); default: all")
    p.add_argument("--num-classes", type=int, help="classes of the classifier (default: 100 for CIFAR nets, 1000 for resnet34)")
    p.add_argument("--num-peers", type=int, help="also size a cohort of N peers")
    p.add_argument("--share", choices=SHARE_MODES, default="early", help="what the cohort's peers share (default: early)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    add_plugin_argument(p)
    p.set_defaults(run=run)


def describe(name: str, num_classes: int | None, num_peers: int | None, share: str) -> dict:
    backbone = create_backbone(name, num_classes)
    size = backbone.spec.input_size
    row = {
        "name": name,
        "num_classes": backbone.num_classes,
        "input_size": size,
        "params": count_params(backbone),
        "macs": count_macs(backbone, size),
        "branch_points": {"early": backbone.spec.early, "late": backbone.spec.late},
    }
    if num_peers:
        cohort = Cohort(lambda: create_backbone(name, num_classes), num_peers, share)
        row["cohort"] = {"num_peers": num_peers, "share": share, "params": count_params(cohort), "macs": count_macs(cohort, size)}
    return row


def run(args: argparse.Namespace) -> int:
    from okd.errors import OKDUserError

    if args.num_peers is not None and args.num_peers < 1:
        raise OKDUserError(f"--num-peers must be >= 1, got {args.num_peers}")
    import_plugins(args.plugins)
    names = [resolve_backbone_name(a) for a in args.arch] if args.arch else list_backbones()
    rows = [describe(n, args.num_classes, args.num_peers, args.share) for n in names]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    header = ["backbone", "classes", "input", "params", "MACs", "early: peers from", "late: peers from"]
    if args.num_peers:
        header += [f"cohort x{args.num_peers} ({args.share}) params", "cohort MACs"]
    table = []
    for r in rows:
        cells = [r["name"], str(r["num_classes"]), f"{r['input_size']}px", f"{r['params']:,} ({r['params'] / 1e6:.2f}M)",
                 f"{r['macs'] / 1e9:.4f}G", r["branch_points"]["early"], r["branch_points"]["late"]]
        if args.num_peers:
            c = r["cohort"]
            cells += [f"{c['params']:,}", f"{c['macs'] / 1e9:.4f}G"]
        table.append(cells)
    print(format_table(header, table))
    return 0

