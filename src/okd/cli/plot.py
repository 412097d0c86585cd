"""``okd plot``: PNG curves of runs (test top-1 error and training loss terms per epoch)."""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot the training curves of runs",
                       description="Write test_error.png and train_loss.png for every run folder (metrics.jsonl), "
                       "finished or not. Needs matplotlib: pip install 'okd-torch[plot]'.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, or folders searched recursively")
    p.add_argument("--out", help="write into OUT/<run name>/ instead of into each run folder")
    p.add_argument("--by-method", metavar="PNG", help="instead, write ONE figure: the deployed test error per epoch, "
                   "mean over the seeds of each method (one line per method, band: +- 1 std)")
    p.set_defaults(run=run)


def labels(folders: list[Path]) -> dict[Path, str]:
    """Unique, file-system-safe names: each folder's path below the folders' common parent, joined by '-'."""
    resolved = [f.resolve() for f in folders]
    if len(resolved) == 1:
        return {folders[0]: resolved[0].name}
    common = Path(os.path.commonpath(resolved))
    return {f: re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(r.relative_to(common).parts)) for f, r in zip(folders, resolved)}


def run(args: argparse.Namespace) -> int:
    from okd.report.curves import find_metric_dirs, plot_run
    from okd.report.plots import require_matplotlib

    require_matplotlib()
    folders = find_metric_dirs(args.runs)
    if args.by_method:
        from okd.report.method_curves import plot_method_curves

        print(plot_method_curves(folders, args.by_method))
        return 0
    names = labels(folders)
    for folder in folders:
        out_dir = Path(args.out) / names[folder] if args.out else folder
        for path in plot_run(folder, out_dir):
            print(path)
    return 0
