"""``okd export``: one peer (the plain backbone) or the method's ensemble, from a checkpoint."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a peer or the ensemble of a checkpoint",
                       description="Export the deployed peer, peer N, or the method's ensemble of a checkpoint written by "
                       "`okd train`. state_dict: the plain backbone's weights + metadata (torch.load(weights_only=True); "
                       "loads strict into okd.models.create_backbone). torchscript / onnx: a traced graph "
                       "(onnx needs pip install 'okd[export]'). The result is checked against the checkpoint's logits.")
    p.add_argument("--checkpoint", required=True, help="best.pt or last.pt of a run")
    p.add_argument("--peer", default="deployed", help="deployed (default) | ensemble | a peer index")
    p.add_argument("--format", default="state_dict", choices=("state_dict", "torchscript", "onnx"))
    p.add_argument("--out", required=True, help="file to write (e.g. model.pt, model.ts, model.onnx)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from okd.report.export import export_checkpoint

    result = export_checkpoint(args.checkpoint, args.peer, args.format, args.out)
    meta = result.meta
    what = "ensemble" if meta["peer"] == "ensemble" else f"peer {meta['peer']}"
    check = ("not checked (onnxruntime missing: pip install 'okd[export]')" if result.max_abs_diff is None
             else f"max |logit difference| vs checkpoint {result.max_abs_diff:.2e} (logits up to {result.logit_scale:.2e})")
    print(f"wrote {result.path}: {meta['method']} {meta['arch']} {what} ({meta['num_classes']} classes, "
          f"{meta['input_size']}px, {args.format}); {check}")
    return 0
