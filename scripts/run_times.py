#!/usr/bin/env python
"""Training time of finished runs, per method: a Markdown table for the comparison's README section.

    python scripts/run_times.py ROOT

A run's time is the sum of its epochs' ``train_seconds`` (metrics.jsonl: the training passes only,
not evaluation or checkpoints), so a run that was interrupted and resumed counts its epochs once.
Times depend on what else the machine ran at the time: compare them only between runs made alike.
"""

from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def run_minutes(run: Path) -> tuple[str, float] | None:
    """(method, training minutes) of a finished run folder, None for an unfinished or unreadable one."""
    try:
        summary = json.loads((run / "summary.json").read_text())
        if not summary.get("finished"):
            return None
        epochs = {}
        for line in (run / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            epochs[record["epoch"]] = record["train_seconds"]  # a resumed epoch replaces its first attempt
        return summary["method"], sum(epochs.values()) / 60.0
    except (OSError, ValueError, KeyError):
        return None


def times_table(root: Path) -> str:
    by_method: dict[str, list[float]] = defaultdict(list)
    for summary in sorted(root.rglob("summary.json")):
        if (timed := run_minutes(summary.parent)) is not None:
            by_method[timed[0]].append(timed[1])
    if not by_method:
        raise SystemExit(f"run_times.py: no finished runs under {root}")
    lines = ["| Method | Runs | Training minutes per run: median | min | max |", "|---|---|---|---|---|"]
    for method, values in sorted(by_method.items(), key=lambda item: (item[0] != "baseline", item[0])):
        lines.append(f"| {method} | {len(values)} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |")
    total = sum(v for values in by_method.values() for v in values)
    lines.append(f"\nAll {sum(map(len, by_method.values()))} runs: {total / 60:.1f} hours of training.")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print("usage: python scripts/run_times.py ROOT (a folder of run folders)", file=sys.stderr)
        raise SystemExit(2)
    print(times_table(Path(sys.argv[1])))
