"""One figure comparing methods: the deployed network's test error per epoch, mean over seeds.

A comparison over seeds is read off the mean curve of each method; a band of one sample standard
deviation shows how far the seeds spread, so a gap between two lines can be judged against it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from okd.errors import OKDUserError
from okd.methods import DEFAULT_METHOD, get_method_class
from okd.report.curves import _epoch_axis, _series, read_curves
from okd.report.plots import figure, save


@dataclass(frozen=True)
class MethodCurve:
    label: str  # method name, "+ variant" where one method has several
    runs: int
    epochs: list[int]
    mean: list[float]  # deployed top-1 error (%) per epoch, mean over the runs
    std: list[float]  # sample std over the runs (0 for a single run)


def method_label(config: dict) -> str:
    """The method's own label for the run (``OKDMethod.run_label``: a variant may be a line of its own);
    the saved name for a method not registered here (a plugin's)."""
    method = str(config.get("method", "?"))
    try:
        return get_method_class(method).run_label(config)
    except OKDUserError:
        return method


def method_curves(folders: list[Path], head: str = "deployed") -> list[MethodCurve]:
    """Group run folders by method; average ``head``'s test top-1 over the epochs every run of it reached."""
    groups: dict[str, list[list[float]]] = {}
    for folder in folders:
        run = read_curves(folder)
        groups.setdefault(method_label(run.config), []).append(_series(run, "test", head, "top1"))
    curves = []
    for label, series in groups.items():
        length = min(len(s) for s in series)  # an unfinished run shortens its method's line, never mixes in
        columns = [[s[i] for s in series] for i in range(length)]
        curves.append(MethodCurve(
            label, len(series), list(range(1, length + 1)), [statistics.fmean(c) for c in columns],
            [statistics.stdev(c) if len(c) > 1 else 0.0 for c in columns],
        ))
    return sorted(curves, key=lambda c: (c.label != DEFAULT_METHOD, c.mean[-1]))  # the reference line first


def line_styles(count: int) -> list[dict]:
    """``count`` distinct (colour, dash) pairs: the ten default colours solid, then dashed, then dotted,
    so twelve methods never share a line's look."""
    dashes = ("-", "--", ":", "-.")
    return [{"color": f"C{i % 10}", "linestyle": dashes[(i // 10) % len(dashes)], "linewidth": 1.5} for i in range(count)]


def plot_method_curves(folders: list[Path], path: str | Path, title: str | None = None) -> Path:
    """Deployed test error per epoch, one line per method (mean over seeds, band: ± 1 std)."""
    curves = method_curves(folders)
    if not curves:
        raise OKDUserError("no runs to compare")
    fig = figure(9, 5.5)
    ax = fig.add_subplot()
    last_epoch = max(c.epochs[-1] for c in curves)
    others = iter(line_styles(len(curves)))
    for curve in curves:
        style = {"color": "black", "linestyle": "-", "linewidth": 2.5} if curve.label == DEFAULT_METHOD else next(others)
        short = "" if curve.epochs[-1] == last_epoch else f", epoch {curve.epochs[-1]}"  # a line cut short says where
        ax.plot(curve.epochs, curve.mean, marker="o", markersize=3,
                label=f"{curve.label}: {curve.mean[-1]:.2f}% (n={curve.runs}{short})", **style)
        low = [m - s for m, s in zip(curve.mean, curve.std)]
        high = [m + s for m, s in zip(curve.mean, curve.std)]
        ax.fill_between(curve.epochs, low, high, color=style["color"], alpha=0.08, linewidth=0)
    _epoch_axis(ax)
    final = [v for c in curves for v in c.mean[len(c.mean) // 3:]]  # zoom on the later epochs, where methods differ
    ax.set_ylim(max(0.0, min(final) * 0.9), max(final) * 1.1)
    ax.set_ylabel("deployed test top-1 error (%), mean over seeds")
    ax.set_title(title or "Test top-1 error per epoch (band: ± 1 std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", title="last epoch", title_fontsize="small", ncol=2)
    return save(fig, path)
