"""Markdown, CSV and JSON renderings of the same ``Table`` data.

Markdown is for reading (one line per backbone, as in the paper); CSV is long-form, one line per
cell with plain numbers, so that a spreadsheet or pandas can reuse it without parsing "a ± b".
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from okd.common.tables import format_table
from okd.report.paper import METHOD_NAMES, PAPER_DATASET, dataset_name
from okd.report.collect import RunRecord
from okd.report.significance import Difference, welch_difference
from okd.report.tables import Cell, Column, Row, Stat, Table

MISSING = "—"


def fmt_stat(stat: Stat | None) -> str:
    if stat is None:
        return MISSING
    return f"{stat.mean:.2f}" if stat.std is None else f"{stat.mean:.2f} ± {stat.std:.2f}"


def _pair(first: str, second: str, show: str) -> str:
    if show == "single":
        return first
    if show == "ens":
        return second
    return f"{first} ({second})"


def cell_text(cell: Cell, show: str) -> str:
    """"single (Ens)" top-1 error, "mean ± std (n=K)" over several seeds, "—" without runs."""
    if cell.n == 0:
        return MISSING
    text = _pair(fmt_stat(cell.single), fmt_stat(cell.ens), show)
    return f"{text} (n={cell.n})" if cell.n > 1 else text


def _num(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def paper_text(cell: Cell, show: str) -> str:
    return _pair(_num(cell.paper_single), _num(cell.paper_ens), show)


def differences(cell: Cell) -> tuple[float | None, float | None]:
    """Ours minus the paper's (negative: a lower error than published)."""
    single = cell.single.mean - cell.paper_single if cell.single and cell.paper_single is not None else None
    ens = cell.ens.mean - cell.paper_ens if cell.ens and cell.paper_ens is not None else None
    return single, ens


def diff_text(cell: Cell, show: str) -> str:
    single, ens = differences(cell)
    signed = lambda v: MISSING if v is None else f"{v:+.2f}"  # noqa: E731
    return _pair(signed(single), signed(ens), show)


def _size(value: int | None, scale: float, unit: str) -> str:
    return MISSING if value is None else f"{value / scale:.2f}{unit}"


def notes(table: Table) -> list[str]:
    out = []
    if table.epoch == "best":
        out.append("Epoch: the best of each head (deployed, ensemble) over training, selected on the test set "
                   "as the reference does, which is optimistic.")
    else:
        out.append("Epoch: the last.")
    out.append("Several seeds: mean ± sample std (n = runs). —: no finished run.")
    split = sorted({key for row in table.rows for key, _ in row.setting})
    if split:
        out.append(f"Runs that differ in more than the seed are never averaged: one row per setting of {', '.join(split)} "
                   "(\"default\": the method's own value).")
    if table.kind == "peers":
        out.append("One backbone per peer (--arch a,b); peer i is the i-th backbone named. Ens: the method's own ensemble.")
    elif table.kind == "ablation":
        out.append("+MCL: MCL-OKD with --alpha 0 (no DOT loss); +MCL+DOT: MCL-OKD with alpha > 0 (the full method).")
    elif table.kind == "successors":
        out.append("Deployed: KDCL, MCL and L-MCL peer 0 (L-MCL: its own classifier, not an auxiliary head), PCL its "
                   "temporal-mean (EMA) peer 0, SwitOKD the student. Ens: the method's own ensemble (KDCL, MCL, L-MCL: "
                   "mean logits; PCL: mean logits of its EMA peers; its fused heads are in okd eval).")
    else:
        out.append("MCL-OKD: runs with alpha > 0; alpha 0 runs are the +MCL ablation. "
                   "Ens: the method's own ensemble of all peers.")
    if table.paper:
        source = dataset_name(PAPER_DATASET[table.kind])
        if table.kind == "successors":
            from okd.report.paper import paper_results

            section = paper_results()["successors"]
            peers = ", ".join(f"{METHOD_NAMES.get(name, name)} {n} peers" for name, n in section["peers"].items())
            out.append(f"paper: each method's own publication ({peers}; 100 − the published mean accuracy, over 3 runs; "
                       "L-MCL's README gives one figure without a run count), not the MCL-OKD paper's protocol; "
                       "only an okd re-run under one protocol is a fair comparison.")
        if table.comparable:
            source = "the figures above" if table.kind == "successors" else "the original README's figures"
            out.append(f"paper: {source}; Δ = ours − paper (negative: a lower error than published).")
        else:
            out.append(f"paper: figures measured on {source}; these {table.dataset} results are not comparable, "
                       "so no difference is shown.")
    return out


def markdown_table(table: Table) -> str:
    header = ["Model"]
    if table.has_complexity:
        header += ["Params", "FLOPs"] + (["Params paper", "FLOPs paper"] if table.paper else [])
    for col in table.columns:
        header.append(col.header)
        if table.paper:
            header.append(f"{col.header} paper")
            if table.comparable:
                header.append(f"Δ {col.header}")
    lines = []
    for row in table.rows:
        cells = [row.model]
        if table.has_complexity:
            cells += [_size(row.params, 1e6, "M"), _size(row.macs, 1e9, "G")]
            if table.paper:
                cells += [row.paper_params or MISSING, row.paper_flops or MISSING]
        for col in table.columns:
            cell = row.cells[col.key]
            cells.append(cell_text(cell, col.show))
            if table.paper:
                cells.append(paper_text(cell, col.show))
                if table.comparable:
                    cells.append(diff_text(cell, col.show))
        lines.append(cells)
    body = format_table(header, lines)
    foot = "\n".join(f"- {note}" for note in notes(table))
    return f"### {table.title}\n\n{body}\n\n{foot}\n"


def baseline_difference(row: Row, columns: tuple[Column, ...], col: Column) -> Difference | None:
    """The deployed peer's error in ``col`` minus the baseline's in the same row, with Welch's 95% interval."""
    base = next((row.cells[c.key].single for c in columns if c.method == "baseline"), None)
    stat = row.cells[col.key].single
    if base is None or stat is None:
        return None
    return welch_difference(stat.mean, stat.std, stat.n, base.mean, base.std, base.n)


def _difference_text(diff: Difference | None) -> str:
    if diff is None:
        return MISSING
    if diff.low is None:
        return f"{diff.mean:+.2f} (one run: no interval)"
    return f"{diff.mean:+.2f} [{diff.low:+.2f}, {diff.high:+.2f}]{' *' if diff.beyond_noise else ''}"


def baseline_difference_markdown(table: Table) -> str:
    """Each method's deployed error minus the baseline's, per row; empty where the table has no baseline."""
    methods = [col for col in table.columns if col.method != "baseline" and col.show != "ens"]
    if len(methods) == len(table.columns) or not table.rows:
        return ""
    lines = [[row.model, *(_difference_text(baseline_difference(row, table.columns, col)) for col in methods)]
             for row in table.rows]
    header = ["Model", *(col.header.replace(" (Ens)", "") for col in methods)]
    return (f"#### Difference from the baseline: deployed peer's top-1 error, method − baseline (points)\n\n"
            f"{format_table(header, lines)}\n\n"
            "- [low, high]: Welch's 95% interval for the difference of the mean errors over seeds (unequal variances). "
            "*: the interval excludes 0, the difference is larger than the seed-to-seed noise at that level; "
            "without *, these seeds cannot tell the method from the baseline.\n"
            "- The test images are the same for every run: the interval covers training noise, not test-set sampling.\n")


def to_markdown(tables: list[Table], others: list[RunRecord] | None = None, epoch: str = "last",
                vs_baseline: bool = False) -> str:
    parts = [markdown_table(t) for t in tables]
    if vs_baseline:
        parts = [part + (f"\n{extra}" if (extra := baseline_difference_markdown(t)) else "") for part, t in zip(parts, tables)]
    text = "\n".join(parts)
    return text + (f"\n{other_runs_markdown(others, epoch)}" if others else "")


def other_runs_records(runs: list[RunRecord], epoch: str = "last") -> list[dict[str, Any]]:
    """Runs no paper table shows (new methods, other backbones), with every head under its own name."""
    return [{"path": str(r.path), "method": r.method, "arch": r.arch, "dataset": r.dataset,
             "num_peers": r.summary.get("num_peers"), "seed": r.seed, "deployed_head": r.deployed_head,
             "top1": r.heads(epoch)} for r in runs]


def other_runs_markdown(runs: list[RunRecord], epoch: str = "last") -> str:
    rows = []
    for record in other_runs_records(runs, epoch):
        heads = dict(record["top1"])
        main = [_num(heads.pop(name, None)) for name in ("deployed", "peer_mean", "ensemble")]
        extra = ", ".join(f"{name} {value:.2f}" for name, value in heads.items()) or MISSING
        rows.append([record["method"], record["arch"], record["dataset"], str(record["num_peers"]), str(record["seed"]),
                     f"{main[0]} ({record['deployed_head']})", main[1], main[2], extra, record["path"]])
    header = ["Method", "Backbone", "Dataset", "Peers", "Seed", "Deployed (head)", "Peer mean", "Ensemble",
              "Method's own heads", "Run"]
    return (f"### Runs in none of the tables above: top-1 error (%), {epoch} epoch\n\n"
            f"{format_table(header, rows)}\n")


CSV_FIELDS = ("table", "dataset", "epoch", "arch", "model", "params", "macs", "column", "method", "variant", "n", "seeds",
              "top1_mean", "top1_std", "ens_top1_mean", "ens_top1_std", "paper_top1", "paper_ens_top1",
              "diff_top1", "diff_ens_top1", "runs")


def _cell_record(table: Table, col: Column, cell: Cell) -> dict[str, Any]:
    diff = differences(cell) if table.comparable else (None, None)
    return {
        "column": col.header,
        "method": col.method,
        "variant": col.variant,
        "n": cell.n,
        "seeds": cell.seeds,
        "top1_mean": cell.single.mean if cell.single else None,
        "top1_std": cell.single.std if cell.single else None,
        "ens_top1_mean": cell.ens.mean if cell.ens else None,
        "ens_top1_std": cell.ens.std if cell.ens else None,
        "paper_top1": cell.paper_single,
        "paper_ens_top1": cell.paper_ens,
        "diff_top1": diff[0],
        "diff_ens_top1": diff[1],
        "runs": [str(r.path) for r in cell.runs],
    }


def to_csv(tables: list[Table]) -> str:
    """Long form: one line per (table, backbone, column); empty fields where there is no value."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for table in tables:
        for row in table.rows:
            for col in table.columns:
                record = _cell_record(table, col, row.cells[col.key])
                record.update(table=table.kind, dataset=table.dataset, epoch=table.epoch, arch=row.arch,
                              model=row.model, params=row.params, macs=row.macs)
                record["seeds"] = " ".join(map(str, record["seeds"]))
                record["runs"] = " ".join(record["runs"])
                writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return buffer.getvalue()


def to_json(tables: list[Table], skipped: list[tuple[Any, str]] | None = None, others: list[RunRecord] | None = None,
            epoch: str = "last") -> str:
    out = []
    for table in tables:
        rows = []
        for row in table.rows:
            cells = {col.key: _cell_record(table, col, row.cells[col.key]) for col in table.columns}
            rows.append({"arch": row.arch, "model": row.model, "setting": dict(row.setting), "params": row.params, "macs": row.macs,
                         "paper_params": row.paper_params, "paper_flops": row.paper_flops, "cells": cells})
        out.append({
            "table": table.kind, "dataset": table.dataset, "epoch": table.epoch, "title": table.title,
            "comparable_to_paper": table.comparable,
            "columns": [{"key": c.key, "header": c.header, "method": c.method, "variant": c.variant, "show": c.show}
                        for c in table.columns],
            "rows": rows, "notes": notes(table),
        })
    skipped_out = [{"path": str(path), "reason": why} for path, why in (skipped or [])]
    return json.dumps({"tables": out, "skipped": skipped_out, "other_runs": other_runs_records(others or [], epoch)},
                      indent=2, ensure_ascii=False)
