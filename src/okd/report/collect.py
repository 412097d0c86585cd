"""Find run folders and read their ``summary.json``: the only thing a report needs from a run.

A report must never mix a half-trained run into a table, so unfinished or unreadable runs are
returned separately (with the reason) for the caller to mention, not silently dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from okd.errors import OKDUserError

SUMMARY = "summary.json"
EPOCHS = ("last", "best")


@dataclass(frozen=True)
class RunRecord:
    """One finished run, as its summary.json describes it."""

    path: Path
    summary: dict[str, Any]

    @property
    def method(self) -> str:
        return str(self.summary["method"])

    @property
    def arch(self) -> str:
        return str(self.summary["arch"])

    @property
    def dataset(self) -> str:
        return str(self.summary["dataset"])

    @property
    def seed(self) -> int:
        return int(self.summary.get("seed", 0))

    @property
    def config(self) -> dict[str, Any]:
        return self.summary.get("config") or {}

    @property
    def variant(self) -> str:
        """MCL-OKD with alpha == 0 is the paper's "+MCL" ablation; unset alpha is the method default (DOT on)."""
        if self.method != "mcl_okd":
            return ""
        alpha = self.config.get("alpha")
        return "mcl" if alpha is not None and float(alpha) == 0 else "mcl_dot"

    @property
    def deployed_head(self) -> str:
        """Which head the run reports as "deployed" (a peer, or a method's own head such as an EMA peer)."""
        return str(self.summary.get("deployed_head") or f"peer{self.summary.get('deployed_peer', 0)}")

    def heads(self, epoch: str = "last") -> dict[str, float]:
        """Top-1 error (%) of every summarised head but the single peers: deployed, peer_mean,
        ensemble, then the method's own heads (``eval_heads``) under their names."""
        source = self.summary.get(epoch) or {}
        peers = {f"peer{i}" for i in range(int(self.summary.get("num_peers") or 0))}
        order = ["deployed", "peer_mean", "ensemble"] + [h for h in source if h not in peers and h not in
                                                          ("deployed", "peer_mean", "ensemble")]
        return {h: float(source[h]["top1"]) for h in order if isinstance(source.get(h), dict) and "top1" in source[h]}

    def top1(self, head: str, epoch: str = "last") -> float | None:
        """Top-1 error (%) of ``head`` ("deployed", "ensemble", "peer_mean") at the last or best epoch."""
        source = self.summary.get(epoch) or {}
        value = (source.get(head) or {}).get("top1")
        return float(value) if value is not None else None


@dataclass
class Collection:
    runs: list[RunRecord] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (run folder, why it is not in the tables)


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Every folder holding a summary.json: the arguments themselves or anything below them."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.name == SUMMARY:
            path = path.parent
        if not path.exists():
            raise OKDUserError(f"{raw} does not exist")
        if not path.is_dir():
            raise OKDUserError(f"{raw} is not a run folder (no {SUMMARY}) nor a folder of runs")
        if (path / SUMMARY).is_file():
            hits = [path / SUMMARY]
        else:
            hits = sorted(path.rglob(SUMMARY))
        if not hits:
            raise OKDUserError(f"no runs found in {raw}: no {SUMMARY} in it or below it")
        for hit in hits:
            found.setdefault(hit.parent.resolve(), None)
    return list(found)


def read_run(folder: Path) -> tuple[RunRecord | None, str]:
    """The run in ``folder``, or None and the reason it cannot be reported."""
    try:
        summary = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"unreadable {SUMMARY} ({exc.__class__.__name__})"
    if not isinstance(summary, dict) or not all(k in summary for k in ("method", "arch", "dataset")):
        return None, f"{SUMMARY} lacks method/arch/dataset (not written by okd train?)"
    if not summary.get("finished"):
        done, total = summary.get("epochs_done", "?"), summary.get("epochs", "?")
        return None, f"unfinished ({done}/{total} epochs)"
    if not summary.get("last"):
        return None, f"{SUMMARY} has no test results"
    run = RunRecord(folder, summary)
    try:  # everything the tables read, read once here: a damaged value skips the run, never the report
        _ = (run.method, run.arch, run.dataset, run.seed, run.variant, run.deployed_head, dict(run.config),
             run.heads("last"), run.heads("best"), int(summary.get("num_peers") or 0))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return None, f"malformed {SUMMARY} ({exc.__class__.__name__}: {str(exc)[:80]})"
    return run, ""


def collect_runs(paths: list[str | Path]) -> Collection:
    """Finished runs under ``paths`` (sorted by folder), plus the skipped ones with their reasons."""
    collection = Collection()
    for folder in sorted(find_run_dirs(paths)):
        run, why = read_run(folder)
        if run is None:
            collection.skipped.append((folder, why))
        else:
            collection.runs.append(run)
    return collection
