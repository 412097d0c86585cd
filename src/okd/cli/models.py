"""``okd models``: every backbone's parameters and multiply-adds, optionally as a cohort; with ``--arch``,
also each backbone's stages (what ``--early`` / ``--late`` choose among), timm:/tv: names included."""

from __future__ import annotations

import argparse
import json
from functools import partial

import torch

from okd.cli.tables import format_table
from okd.errors import OKDUserError
from okd.models import (
    SHARE_MODES,
    Backbone,
    Cohort,
    arch_label,
    backbone_source,
    count_macs,
    count_params,
    create_backbone,
    list_backbones,
    parse_arch,
)
from okd.plugins import add_plugin_argument, import_plugins


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list backbones with parameters and multiply-adds",
                       description="Parameters and multiply-adds (conv + linear weight MACs per image, the paper's 'FLOPs').")
    p.add_argument("--arch", action="append", help="only these backbones (repeatable), also timm:NAME / tv:NAME, each "
                   "shown with its stages and branch points; default: all okd backbones. A comma-separated list (e.g. "
                   "resnet32,resnet110) sizes a cohort of one backbone per peer: each peer and the total")
    p.add_argument("--num-classes", type=int, help="classes of the classifier (default: 100 for CIFAR nets, 1000 for resnet34)")
    p.add_argument("--num-peers", type=int, help="also size a cohort of N peers (--arch a,b: must match the number of names)")
    p.add_argument("--share", choices=SHARE_MODES, help="what the cohort's peers share (default: early; none for --arch a,b)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    add_plugin_argument(p)
    p.set_defaults(run=run)


@torch.no_grad()
def stage_summary(backbone: Backbone) -> list[dict]:
    """Each stage's output shape for one image at the backbone's input size, and its parameter count."""
    was_training = backbone.training
    backbone.eval()
    size = backbone.spec.input_size
    x = torch.zeros(1, 3, size, size)
    rows = []
    for name in backbone.stage_names:
        stage = backbone.stage(name)
        x = stage(x)
        rows.append({"name": name, "output_shape": list(x.shape[1:]), "params": count_params(stage)})
    backbone.train(was_training)
    return rows


def describe(name: str, num_classes: int | None, num_peers: int | None, share: str, stages: bool = False) -> dict:
    backbone = create_backbone(name, num_classes)
    size = backbone.spec.input_size
    row = {
        "name": name,
        "source": backbone_source(name),
        "num_classes": backbone.num_classes,
        "input_size": size,
        "params": count_params(backbone),
        "macs": count_macs(backbone, size),
        "branch_points": {"early": backbone.spec.early, "late": backbone.spec.late},
    }
    if stages:
        row["stages"] = stage_summary(backbone)
    if num_peers:
        cohort = Cohort(lambda: create_backbone(name, num_classes), num_peers, share)
        row["cohort"] = {"num_peers": num_peers, "share": share, "params": count_params(cohort), "macs": count_macs(cohort, size)}
    return row


def describe_cohort(names: list[str], num_classes: int | None, num_peers: int | None, share: str | None) -> dict:
    """A cohort of one backbone per peer (``--arch a,b``): every peer's size and the cohort's total."""
    if num_peers is not None and num_peers != len(names):
        raise OKDUserError(f"--arch {','.join(names)} gives {len(names)} backbones for --num-peers {num_peers}: "
                           "give one backbone per peer, or leave --num-peers out")
    heterogeneous = len(set(names)) > 1
    if heterogeneous and share not in (None, "none"):
        raise OKDUserError(f"--share {share}: peers of different backbones ({arch_label(','.join(names))}) share no "
                           "layers; use --share none (the default for --arch a,b)")
    share = share or ("none" if heterogeneous else "early")
    peers = [describe(name, num_classes, None, share) for name in dict.fromkeys(names)]
    by_name = {row["name"]: row for row in peers}
    cohort = Cohort([partial(create_backbone, name, num_classes) for name in names], len(names), share)
    size = cohort.spec.input_size
    return {
        "name": ",".join(names),
        "num_classes": cohort.num_classes,
        "input_size": size,
        "cohort": {"num_peers": len(names), "share": share, "params": count_params(cohort), "macs": count_macs(cohort, size),
                   "peers": [dict(by_name[name], peer=i) for i, name in enumerate(names)]},
    }


def _size_cells(params: int, macs: int) -> list[str]:
    return [f"{params:,} ({params / 1e6:.2f}M)", f"{macs / 1e9:.4f}G"]


def _cohort_table(row: dict) -> str:
    cohort = row["cohort"]
    table = [[str(p["peer"]), p["name"], str(p["num_classes"]), f"{p['input_size']}px", *_size_cells(p["params"], p["macs"])]
             for p in cohort["peers"]]
    table.append(["total", "", "", "", *_size_cells(cohort["params"], cohort["macs"])])
    title = f"cohort {arch_label(row['name'])}: {cohort['num_peers']} peers, share {cohort['share']}"
    return f"{title}\n" + format_table(["peer", "backbone", "classes", "input", "params", "MACs"], table)


def run(args: argparse.Namespace) -> int:
    if args.num_peers is not None and args.num_peers < 1:
        raise OKDUserError(f"--num-peers must be >= 1, got {args.num_peers}")
    import_plugins(args.plugins)
    archs = [parse_arch(a) for a in args.arch] if args.arch else [[name] for name in list_backbones()]
    rows = [describe_cohort(names, args.num_classes, args.num_peers, args.share) if len(names) > 1
            else describe(names[0], args.num_classes, args.num_peers, args.share or "early", stages=bool(args.arch))
            for names in archs]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    singles = [r for r in rows if "branch_points" in r]
    tables = [_cohort_table(r) for r in rows if "branch_points" not in r]
    if singles:
        tables.insert(0, _backbone_table(singles, args.num_peers, args.share or "early"))
    print("\n\n".join(tables))
    return 0


def _backbone_table(rows: list[dict], num_peers: int | None, share: str) -> str:
    header = ["backbone", "source", "classes", "input", "params", "MACs", "early: peers from", "late: peers from"]
    if num_peers:
        header += [f"cohort x{num_peers} ({share}) params", "cohort MACs"]
    table = []
    for r in rows:
        cells = [r["name"], r["source"], str(r["num_classes"]), f"{r['input_size']}px", *_size_cells(r["params"], r["macs"]),
                 r["branch_points"]["early"], r["branch_points"]["late"]]
        if num_peers:
            c = r["cohort"]
            cells += [f"{c['params']:,}", f"{c['macs'] / 1e9:.4f}G"]
        table.append(cells)
    text = format_table(header, table)
    for r in rows:
        if "stages" in r:
            text += (f"\n\n{r['name']} stages at {r['input_size']}px (early: {r['branch_points']['early']}, "
                     f"late: {r['branch_points']['late']}; override with okd train --early/--late STAGE):\n")
            text += format_table(["stage", "output shape", "params"],
                                 [[s["name"], "x".join(map(str, s["output_shape"])), f"{s['params']:,}"] for s in r["stages"]])
    return text

