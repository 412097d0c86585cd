"""``okd export``: one peer (the plain backbone) or the method's ensemble, from a checkpoint."""

from __future__ import annotations

import argparse
import sys

from okd.plugins import add_plugin_argument


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a peer or the ensemble of a checkpoint",
                       description="Export the deployed peer, peer N, or the method's ensemble of a checkpoint written by "
                       "`okd train`. state_dict: the plain backbone's weights + metadata (torch.load(weights_only=True); "
                       "loads strict into okd.models.create_backbone, or for timm:/tv: archs into the library's own model: "
                       "timm.create_model(NAME, num_classes=C) / torchvision.models.get_model(NAME, num_classes=C)). torchscript / onnx: a traced graph "
                       "(onnx needs pip install 'okd[export]'). The file is re-run and its logits compared with the "
                       "checkpoint's before it is moved to --out; a mismatch exits with code 2 and writes nothing.")
    p.add_argument("--checkpoint", required=True, help="a run folder (its best.pt is used), or best.pt / last.pt")
    p.add_argument("--peer", default="deployed", help="deployed (default) | ensemble | a peer index")
    p.add_argument("--format", default="state_dict", choices=("state_dict", "torchscript", "onnx"))
    p.add_argument("--out", required=True, help="file to write (e.g. model.pt, model.ts, model.onnx)")
    add_plugin_argument(p, "; the run's own plugins are imported anyway")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from okd.plugins import import_plugins
    from okd.engine.checkpoint_path import resolve_checkpoint
    from okd.report.export import export_checkpoint, sidecar

    import_plugins(args.plugins)
    checkpoint, note = resolve_checkpoint(args.checkpoint)
    if note is not None:
        print(f"okd export: {note}", file=sys.stderr)
    result = export_checkpoint(checkpoint, args.peer, args.format, args.out)
    meta = result.meta
    what = "ensemble" if meta["peer"] == "ensemble" else f"peer {meta['peer']}"
    check = ("NOT checked, see the warning" if result.max_abs_diff is None
             else f"checked: max |logit difference| vs checkpoint {result.max_abs_diff:.2e} <= {result.tolerance:.2e} "
             f"(logits up to {result.logit_scale:.2e})")
    print(f"wrote {result.path}: {meta['method']} {meta['arch']} {what} ({meta['num_classes']} classes, "
          f"{meta['input_size']}px, {args.format}); {check}"
          + (f"; metadata also in {sidecar(result.path)}" if args.format == "state_dict" else ""))
    if result.max_abs_diff is None:
        print(f"okd export: warning: onnxruntime is not installed, so {result.path} could not be run and its logits "
              "were not compared with the checkpoint's: pip install 'okd[export]'", file=sys.stderr)
    return 0
