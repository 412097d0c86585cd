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
    """Test top-1 error per epoch: every peer (thin), the peer mean (dashed) and the ensemble (thick).

    Errors fall from ~90% to a few percent, so a log axis keeps the final epochs (where the methods
    differ) readable; each legend entry ends with the last epoch's value.
    """
    fig = figure(8, 5)
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in run.records]
    style = _style(len(epochs))
    heads = list(run.records[-1]["test"])
    peers = sorted((h for h in heads if h.startswith("peer") and h[4:].isdigit()), key=lambda h: int(h[4:]))
    drawn: list[float] = []

    def curve(head: str, label: str, *fmt: str, **kwargs: Any) -> None:
        values = _series(run, "test", head, "top1")
        drawn.extend(values)
        ax.plot(epochs, values, *fmt, label=f"{label}: {_last(values)}", **kwargs, **style)

    for head in peers:
        deployed = run.deployed_peer is not None and head == f"peer{run.deployed_peer}"
        curve(head, head + (" (deployed)" if deployed else ""), linewidth=1, alpha=0.8)
    if "peer_mean" in heads and len(peers) > 1:
        curve("peer_mean", "peer mean", "k--", linewidth=1.5)
    if "ensemble" in heads and len(peers) > 1:
        curve("ensemble", "ensemble", color="black", linewidth=2.5)
    _epoch_axis(ax)
    log = _log_axis(ax, drawn, unit="%")
    ax.set_ylabel("test top-1 error (%)" + (", log scale" if log else ""))
    ax.set_title(f"Test top-1 error: {run.title}")
    ax.grid(alpha=0.3, which="both" if log else "major")
    ax.legend(fontsize="small", title="last epoch", title_fontsize="small")
    return save(fig, path)


def _last(values: list[float]) -> str:
    finite = [v for v in values if v == v]
    return f"{finite[-1]:.2f}%" if finite else "n/a"


def _log_axis(ax: Any, values: list[float], unit: str = "") -> bool:
    """A log y axis with plain-number ticks when the positive values span 10x or more; False if kept linear.

    A value of 0 (no error at all) has no place on a log axis: the axis floor is put a little below the
    smallest positive value and zeros are drawn on it, so they stay visible.
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    finite = [v for v in values if v == v and abs(v) != float("inf")]
    positive = [v for v in finite if v > 0]
    if not positive or any(v < 0 for v in finite) or max(positive) < 10 * min(positive):
        return False  # negative values, or too narrow a range for a log axis to help
    low, high = min(positive) / 1.5, max(positive) * 1.3
    for line in ax.get_lines():
        line.set_ydata([low if y == 0 else y for y in line.get_ydata()])
    ax.set_yscale("log")
    ax.set_ylim(low, high)
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}{unit}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    return True


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
        values = _series(run, "train", term)
        ax.plot(epochs, values, color="C0", **_style(len(epochs)))
        ax.set_title(f"{term}: last {values[-1]:.3g}")
        _epoch_axis(ax)
        log = _log_axis(ax, values)
        ax.set_ylabel("mean loss" + (", log scale" if log else ""))
        ax.grid(alpha=0.3, which="both" if log else "major")
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
