"""PNG figures: a bar chart of report tables, and the training curves of one run.

matplotlib is an optional extra; figures are drawn on the Agg canvas directly (no pyplot global
state), so plotting works headless and never changes the caller's backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from okd.errors import OKDUserError
from okd.report.tables import Table


def require_matplotlib() -> None:
    """Fail before any work is done when the optional extra is missing."""
    try:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
    except ImportError:
        raise OKDUserError("plotting needs matplotlib: pip install 'okd-torch[plot]'") from None


def figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise OKDUserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


def _table_axes(ax: Any, table: Table) -> None:
    """Grouped bars: one group per backbone, one bar per column (deployed peer); x = ensemble, red - = paper.

    Rows and columns with nothing to draw are left out: an empty slot and a legend entry for a method
    that was not run only push the real bars apart.
    """
    with_paper = table.paper and table.comparable  # published figures of another dataset would mislead here

    def drawn(row: Any, col: Any) -> bool:
        cell = row.cells[col.key]
        return bool(cell.n) or (with_paper and cell.paper_single is not None)

    columns = [c for c in table.columns if c.show != "ens"]  # an ensemble-only column is drawn as markers
    colour = {c.key: f"C{j}" for j, c in enumerate(columns)}  # a method keeps its colour when others are left out
    rows = [r for r in table.rows if any(drawn(r, c) for c in columns)]
    columns = [c for c in columns if any(drawn(r, c) for r in rows)]
    width = 0.8 / max(len(columns), 1)
    for j, col in enumerate(columns):
        xs = [i - 0.4 + width * (j + 0.5) for i in range(len(rows))]
        cells = [row.cells[col.key] for row in rows]
        heights = [c.single.mean if c.single else float("nan") for c in cells]
        ax.bar(xs, heights, width, color=colour[col.key], label=col.header.replace(" (Ens)", ""))
        spread = [(x, c.single.mean, c.single.std) for x, c in zip(xs, cells) if c.single and c.single.std is not None]
        if spread:
            ex, ey, err = zip(*spread)
            ax.errorbar(ex, ey, yerr=err, fmt="none", ecolor="black", capsize=3, label="± std over seeds")
        ens = [(x, c.ens.mean) for x, c in zip(xs, cells) if c.ens]
        if ens:
            ax.scatter(*zip(*ens), marker="x", color="black", zorder=3, label="ensemble (Ens)")
        published = [(x, c.paper_single) for x, c in zip(xs, cells) if with_paper and c.paper_single is not None]
        if published:
            ax.scatter(*zip(*published), marker="_", s=250, linewidths=2, color="red", zorder=4, label="paper (deployed)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))  # one "ensemble" entry, not one per column
    if unique:
        ax.legend(unique.values(), unique.keys(), fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xticks(range(len(rows)), [row.model for row in rows])
    ax.set_ylabel("top-1 error (%), bars: deployed peer")
    title = table.title.split(" (ensemble")[0]
    ax.set_title(title + (", best epoch (optimistic)" if table.epoch == "best" else ", last epoch"), fontsize="medium")
    ax.grid(axis="y", alpha=0.3)
    if not rows:
        ax.text(0.5, 0.5, "no finished runs", transform=ax.transAxes, ha="center", va="center")


def plot_tables(tables: list[Table], path: str | Path) -> Path:
    """One bar chart per table, stacked in one PNG."""
    fig = figure(11, 4.2 * len(tables))
    axes = fig.subplots(len(tables), 1, squeeze=False)[:, 0]
    for ax, table in zip(axes, tables):
        _table_axes(ax, table)
    return save(fig, path)
