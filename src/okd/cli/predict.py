"""``okd predict``: the class of each image file, from a run (checkpoint or folder) or an exported model."""

from __future__ import annotations

import argparse
import json
import sys

from okd.plugins import add_plugin_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="classify image files with a trained run or an exported model",
                       description="Classify image files (or the images under folders) with the deployed peer of a run, "
                       "or with a file written by `okd export` (ONNX, TorchScript or state dict). Each image is prepared "
                       "exactly as the run's evaluation images were (resize, centre crop, mean/std) and the class names "
                       "the run saved are printed.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a run folder (its best.pt is used) or best.pt / last.pt")
    source.add_argument("--model", help="a model written by `okd export` (.onnx needs pip install 'okd[export]')")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--peer", default="deployed", help="with --checkpoint: deployed (default) | ensemble | a peer index")
    p.add_argument("--top-k", type=int, default=1, help="also list the K most probable classes (default 1)")
    p.add_argument("--format", choices=("table", "json"), default="table")
    add_plugin_argument(p, "; the run's own plugins are imported anyway")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from okd.cli.tables import format_table
    from okd.engine.checkpoint_path import resolve_checkpoint
    from okd.plugins import import_plugins
    from okd.report.predict import classify, from_checkpoint, from_model

    import_plugins(args.plugins)
    if args.checkpoint is not None:
        checkpoint, note = resolve_checkpoint(args.checkpoint)
        if note is not None:
            print(f"okd predict: {note}", file=sys.stderr)
        predictor = from_checkpoint(checkpoint, args.peer)
    else:
        predictor = from_model(args.model)
    results = classify(predictor, args.images, args.top_k)
    if args.format == "json":
        print(json.dumps(results, indent=2))
        return 0
    rows = [[r["image"], r["class"], f"{100 * r['probability']:.1f}",
             ", ".join(f"{t['class']} {100 * t['probability']:.1f}" for t in r["top"][1:])] for r in results]
    headers = ["image", "class", "probability %", f"next {args.top_k - 1} (%)"]
    print(format_table(headers if args.top_k > 1 else headers[:3], [row if args.top_k > 1 else row[:3] for row in rows]))
    return 0
