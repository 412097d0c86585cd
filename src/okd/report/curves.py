"""Training curves of one run folder, read from metrics.jsonl (works while the run is still going)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from okd.errors import OKDUserError
from okd.report.plots import figure, save

METRICS = "metrics.jsonl"


@dataclass
class RunCurves:
    path: Path
    records: list[dict[str, Any]]
    config: dict[str, Any]
    deployed_peer: int | None

    @property
    def title(self) -> str:
        c = self.config
        parts = [c.get("method"), c.get("arch"), c.get("dataset"), f"seed {c.get('seed')}" if "seed" in c else None]
        return " · ".join(str(p) for p in parts if p is not None) or self.path.name


def find_metric_dirs(paths: list[str | Path]) -> list[Path]:
    """Run folders (holding metrics.jsonl) given directly or found below the arguments."""
    found: dict[Path, None] = {}
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise OKDUserError(f"{raw} is not a run folder" + ("" if path.exists() else " (it does not exist)"))
        hits = [path / METRICS] if (path / METRICS).is_file() else sorted(path.rglob(METRICS))
        if not hits:
            raise OKDUserError(f"no runs found in {raw}: no {METRICS} in it or below it")
        for hit in hits:
            found.setdefault(hit.parent, None)
    return list(found)


def read_curves(folder: Path) -> RunCurves:
    try:
        lines = (folder / METRICS).read_text(encoding="utf-8").splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OKDUserError(f"cannot read {folder / METRICS}: {exc}") from None
    if not records:
        raise OKDUserError(f"{folder / METRICS} holds no epoch yet")
    config: dict[str, Any] = {}
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        pass
    deployed = None
    try:
        deployed = json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("deployed_peer")
    except (OSError, ValueError):
        pass
    return RunCurves(folder, records, config, deployed)


def _style(n_epochs: int) -> dict[str, Any]:
    return {"marker": "o", "markersize": 3} if n_epochs <= 30 else {}


def plot_errors(run: RunCurves, path: Path) -> Path:
    """Test top-1 error per epoch: every peer (thin), the peer mean (dashed) and the ensemble (thick)."""
    fig = figure(8, 5)
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in run.records]
    style = _style(len(epochs))
    heads = list(run.records[-1]["test"])
    peers = sorted((h for h in heads if h.startswith("peer") and h[4:].isdigit()), key=lambda h: int(h[4:]))
    for head in peers:
        label = head + (" (deployed)" if run.deployed_peer is not None and head == f"peer{run.deployed_peer}" else "")
        ax.plot(epochs, _series(run, "test", head, "top1"), linewidth=1, alpha=0.8, label=label, **style)
    if "peer_mean" in heads and len(peers) > 1:
        ax.plot(epochs, _series(run, "test", "peer_mean", "top1"), "k--", linewidth=1.5, label="peer mean", **style)
    if "ensemble" in heads and len(peers) > 1:
        ax.plot(epochs, _series(run, "test", "ensemble", "top1"), color="black", linewidth=2.5, label="ensemble", **style)
    _epoch_axis(ax)
    ax.set_ylabel("test top-1 error (%)")
    ax.set_title(f"Test top-1 error: {run.title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save(fig, path)


def plot_losses(run: RunCurves, path: Path) -> Path:
    """Every training-loss term per epoch, one panel each (their scales differ by orders of magnitude)."""
    epochs = [r["epoch"] for r in run.records]
    terms = list(run.records[-1].get("train", {}))
    if "total" in terms:
        terms = [t for t in terms if t != "total"] + ["total"]
    cols = min(3, max(len(terms), 1))
    rows = -(-max(len(terms), 1) // cols)
    fig = figure(4.2 * cols, 3.2 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, term in zip(axes, terms):
        ax.plot(epochs, _series(run, "train", term), color="C0", **_style(len(epochs)))
        ax.set_title(term)
        _epoch_axis(ax)
        ax.set_ylabel("mean loss")
        ax.grid(alpha=0.3)
    for ax in axes[len(terms):]:
        ax.set_visible(False)
    fig.suptitle(f"Training loss terms: {run.title}")
    return save(fig, path)


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _series(run: RunCurves, section: str, head: str, key: str | None = None) -> list[float]:
    out = []
    for record in run.records:
        value = record.get(section, {}).get(head)
        if key is not None and isinstance(value, dict):
            value = value.get(key)
        out.append(float("nan") if value is None else float(value))
    return out


def plot_run(folder: Path, out_dir: Path) -> list[Path]:
    run = read_curves(folder)
    return [plot_errors(run, out_dir / "test_error.png"), plot_losses(run, out_dir / "train_loss.png")]
