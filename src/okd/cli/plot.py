"""``okd plot``: PNG curves of runs (test top-1 error and training loss terms per epoch)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plot", help="plot the training curves of runs",
                       description="Write test_error.png and train_loss.png for every run folder (metrics.jsonl), "
                       "finished or not. Needs matplotlib: pip install 'okd[plot]'.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, or folders searched recursively")
    p.add_argument("--out", help="write into OUT/<run name>/ instead of each run folder")
    p.set_defaults(run=run)


def _label(folder: Path, used: set[str]) -> str:
    """A file-system-safe, unique name for a run folder under --out."""
    parts = folder.resolve().parts[-3:]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts[-1:]))
    for depth in (2, 3):
        if label not in used:
            break
        label = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts[-depth:]))
    base, k = label, 2
    while label in used:
        label, k = f"{base}-{k}", k + 1
    used.add(label)
    return label


def run(args: argparse.Namespace) -> int:
    from okd.report.curves import find_metric_dirs, plot_run

    used: set[str] = set()
    for folder in find_metric_dirs(args.runs):
        out_dir = Path(args.out) / _label(folder, used) if args.out else folder
        for path in plot_run(folder, out_dir):
            print(path)
    return 0
