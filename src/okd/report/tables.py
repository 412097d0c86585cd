"""The report tables as data (the paper's three, the successors', per-peer): which runs fill which cell, over seeds.

Tables are built as plain data (rows x columns of ``Cell``) and rendered separately, so Markdown,
CSV, JSON and the bar chart all show exactly the same numbers. A cell is never filled from
anything but finished runs: no run means no value.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field

from okd.report.collect import RunRecord
from okd.report.complexity import complexity
from okd.report.settings import IRRELEVANT, Setting, setting_label, split_by_setting
from okd.report.paper import (
    CIFAR_ROWS,
    IMAGENET_ROWS,
    METHOD_NAMES,
    PAPER_DATASET,
    SUCCESSOR_METHODS,
    dataset_name,
    model_name,
    paper_complexity,
    paper_figures,
)

TABLE_KINDS = ("main", "imagenet", "ablation", "successors", "peers")

_IRRELEVANT = IRRELEVANT  # config fields that do not change what a run computes; all others must agree within a cell
# Datasets whose tables keep the paper's whole layout (every backbone row, the ablation table) even where no run
# fills it: the paper's own datasets and the synthetic stand-in `okd reproduce --dataset synthetic` checks it on.
# Elsewhere (a user's image folder, digits) rows and tables without runs are left out unless --paper asks for them.
FULL_LAYOUT_DATASETS = frozenset({"cifar100", "imagenet", "synthetic"})


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    method: str
    variant: str = ""  # "" for every method but MCL-OKD: "mcl" (alpha 0) | "mcl_dot"
    show: str = "both"  # "both": "single (Ens)" | "single" | "ens"
    paper_key: str = ""  # key of this column in paper_results.json (default: the method)
    head: str = "deployed"  # the summary head of the "single" figure ("peer1" in a per-peer table)


def _main_columns() -> tuple[Column, ...]:
    cols = [Column("baseline", "Baseline", "baseline", show="single")]
    for method in ("dml", "cl_ilr", "one", "okddip"):
        cols.append(Column(method, f"{METHOD_NAMES[method]} (Ens)", method))
    cols.append(Column("mcl_okd", "MCL-OKD (Ens)", "mcl_okd", "mcl_dot"))
    return tuple(cols)


COLUMNS: dict[str, tuple[Column, ...]] = {
    "main": _main_columns(),
    "imagenet": (
        Column("baseline", "Baseline", "baseline", show="single"),
        Column("mcl_okd", "MCL-OKD", "mcl_okd", "mcl_dot", show="single"),
        Column("mcl_okd_ens", "MCL-OKD (Ens)", "mcl_okd", "mcl_dot", show="ens", paper_key="mcl_okd"),
    ),
    "ablation": (
        Column("baseline", "Baseline", "baseline", show="single"),
        Column("mcl", "+MCL", "mcl_okd", "mcl", show="single", paper_key="mcl"),
        Column("mcl_dot", "+MCL+DOT (MCL-OKD)", "mcl_okd", "mcl_dot", show="single", paper_key="mcl_dot"),
    ),
    "successors": (
        Column("baseline", "Baseline", "baseline", show="single"),
        *(Column(m, f"{METHOD_NAMES[m]} (Ens)", m) for m in SUCCESSOR_METHODS),
    ),
}
ROWS: dict[str, tuple[str, ...]] = {"main": CIFAR_ROWS, "imagenet": IMAGENET_ROWS, "ablation": CIFAR_ROWS, "successors": CIFAR_ROWS}


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (None for a single run) over ``n`` runs."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat | None:
        if not values:
            return None
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values))


@dataclass
class Cell:
    runs: list[RunRecord] = field(default_factory=list)
    single: Stat | None = None  # deployed peer
    ens: Stat | None = None  # the method's ensemble
    paper_single: float | None = None
    paper_ens: float | None = None

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def seeds(self) -> list[int]:
        return sorted(run.seed for run in self.runs)


@dataclass
class Row:
    arch: str
    model: str
    params: int | None
    macs: int | None
    paper_params: str | None
    paper_flops: str | None
    cells: dict[str, Cell]
    setting: Setting = ()  # what this row's runs share and the arch's other rows' runs do not (report/settings.py)


@dataclass
class Table:
    kind: str
    dataset: str
    epoch: str
    columns: tuple[Column, ...]
    rows: list[Row]
    comparable: bool  # the paper's figures were measured on this table's dataset
    paper: bool  # the paper's figures were asked for

    @property
    def title(self) -> str:
        name = dataset_name(self.dataset)
        shown = name if name == self.dataset else f"{name} ({self.dataset})"
        if self.kind == "ablation":
            return f"Ablation on {shown}: top-1 error (%) of the deployed peer"
        if self.kind == "successors":
            return f"Methods after MCL-OKD on {shown}: top-1 error (%) of the deployed peer (ensemble in parentheses)"
        if self.kind == "imagenet":
            return f"{shown}: top-1 error (%) of the deployed peer and the MCL-OKD ensemble"
        if self.kind == "peers":
            return f"{shown}, cohort {model_name(self.rows[0].arch)}: top-1 error (%) of every peer and the ensemble"
        return f"{shown}: top-1 error (%) of the deployed peer (ensemble of all peers in parentheses)"

    @property
    def has_complexity(self) -> bool:
        return self.kind == "main"


def column_of(run: RunRecord, column: Column) -> bool:
    return run.method == column.method and run.variant == column.variant


def default_kinds(dataset: str, runs: list[RunRecord] = ()) -> tuple[str, ...]:
    """The paper's tables of ``dataset``, plus the successors' table where such runs exist."""
    kinds: tuple[str, ...] = ("imagenet",) if dataset == "imagenet" else ("main", "ablation")
    if any(r.dataset == dataset and r.method in SUCCESSOR_METHODS for r in runs):
        kinds += ("successors",)
    return kinds


def dataset_order(datasets: set[str]) -> list[str]:
    """The paper's datasets first, then the others alphabetically."""
    return sorted(datasets, key=lambda d: ({"cifar100": 0, "imagenet": 1}.get(d, 2), d))


def build_table(kind: str, dataset: str, runs: list[RunRecord], epoch: str = "last", paper: bool = False) -> Table:
    """One table of ``kind`` from the finished runs of ``dataset`` (other datasets' runs are ignored)."""
    columns = COLUMNS[kind]
    mine = [r for r in runs if r.dataset == dataset and any(column_of(r, c) for c in columns)]
    archs = list(ROWS[kind]) + sorted({r.arch for r in mine} - set(ROWS[kind]))
    comparable = PAPER_DATASET[kind] == dataset
    rows = []
    for arch in archs:
        arch_runs = [r for r in mine if r.arch == arch]
        for setting, setting_runs in split_by_setting(arch_runs, lambda r: (r.method, r.variant)):
            cells = {}
            for col in columns:
                cell_runs = sorted((r for r in setting_runs if column_of(r, col)), key=lambda r: (r.seed, str(r.path)))
                cell = Cell(cell_runs)
                cell.single = Stat.of([v for r in cell_runs if (v := r.top1(col.head, epoch)) is not None])
                if col.method != "baseline":
                    cell.ens = Stat.of([v for r in cell_runs if (v := r.top1("ensemble", epoch)) is not None])
                if paper:
                    cell.paper_single, cell.paper_ens = paper_figures(kind, arch, col.paper_key or col.method)
                cells[col.key] = cell
            params, macs = complexity(arch, dataset, [r for r in runs if r.dataset == dataset])
            paper_params, paper_flops = paper_complexity(arch) if (paper and kind == "main") else (None, None)
            rows.append(Row(arch, _row_name(arch, setting), params, macs, paper_params, paper_flops, cells, setting))
    if not (paper or dataset in FULL_LAYOUT_DATASETS):  # no empty rows of the paper's backbones for a user's data
        rows = [row for row in rows if any(cell.n for cell in row.cells.values())]
    return Table(kind, dataset, epoch, columns, rows, comparable, paper)


def _row_name(arch: str, setting: Setting) -> str:
    label = setting_label(setting)
    return f"{model_name(arch)} ({label})" if label else model_name(arch)


def heterogeneous_archs(runs: list[RunRecord], dataset: str) -> list[str]:
    """The cohorts of different backbones (``--arch a,b``) run on ``dataset``, sorted."""
    return sorted({r.arch for r in runs if r.dataset == dataset and "," in r.arch})


def build_peer_table(dataset: str, arch: str, runs: list[RunRecord], epoch: str = "last") -> Table:
    """Every peer of one heterogeneous cohort, per method: the columns name each peer's backbone.

    The main table shows such a cohort only through its deployed peer; here each backbone's own
    error is visible (the DML paper's "ResNet-32 trained with ResNet-110" figures).
    """
    backbones = arch.split(",")
    mine = [r for r in runs if r.dataset == dataset and r.arch == arch]
    columns = []
    for method in sorted({r.method for r in mine}, key=lambda m: (list(METHOD_NAMES).index(m) if m in METHOD_NAMES else 99, m)):
        label = METHOD_NAMES.get(method, method)
        for i, backbone in enumerate(backbones):
            columns.append(Column(f"{method}_peer{i}", f"{label} peer {i}: {model_name(backbone)}", method,
                                  show="single", head=f"peer{i}"))
        columns.append(Column(f"{method}_ens", f"{label} Ens", method, show="ens"))
    rows = []
    for setting, setting_runs in split_by_setting(mine, lambda r: r.method):
        cells = {}
        for col in columns:
            cell_runs = sorted((r for r in setting_runs if r.method == col.method), key=lambda r: (r.seed, str(r.path)))
            cell = Cell(cell_runs)
            cell.single = Stat.of([v for r in cell_runs if (v := r.top1(col.head, epoch)) is not None])
            cell.ens = Stat.of([v for r in cell_runs if (v := r.top1("ensemble", epoch)) is not None])
            cells[col.key] = cell
        rows.append(Row(arch, _row_name(arch, setting), None, None, None, None, cells, setting))
    return Table("peers", dataset, epoch, tuple(columns), rows, comparable=False, paper=False)


def build_tables(runs: list[RunRecord], datasets: list[str], kinds: tuple[str, ...] | None = None,
                 epoch: str = "last", paper: bool = False) -> list[Table]:
    """Every requested table for every dataset, in the paper's order; by default a per-peer table
    follows for each heterogeneous cohort that was run."""
    tables = []
    for dataset in datasets:
        wanted = kinds or (*default_kinds(dataset, runs), "peers")
        for kind in wanted:
            if kind == "peers":
                tables += [build_peer_table(dataset, arch, runs, epoch) for arch in heterogeneous_archs(runs, dataset)]
            else:
                table = build_table(kind, dataset, runs, epoch, paper)
                keep = kinds is not None or paper or dataset in FULL_LAYOUT_DATASETS  # asked for, or the paper's layout
                methods = {col.key for col in table.columns if col.method != "baseline"}  # the baseline is every table's reference
                if keep or any(row.cells[key].n for row in table.rows for key in methods):
                    tables.append(table)
    return tables


def consistency_warnings(tables: list[Table]) -> list[str]:
    """Cells whose runs differ in more than the seed (e.g. other --num-peers), and repeated seeds."""
    warnings: dict[str, None] = {}
    for table in tables:
        for row in table.rows:
            for col in table.columns:
                cell = row.cells[col.key]
                where = f"{table.dataset} / {row.model} / {col.header}"
                if len(set(cell.seeds)) < cell.n:
                    warnings[f"{where}: {cell.n} runs share seeds {cell.seeds} (copies of one run?)"] = None
                differing: dict[str, set[str]] = defaultdict(set)
                for run in cell.runs:
                    for key, value in run.config.items():
                        if key not in _IRRELEVANT:
                            differing[key].add(repr(value))
                for key, values in sorted(differing.items()):
                    if len(values) > 1:
                        warnings[f"{where}: runs differ in {key} ({', '.join(sorted(values))}); aggregated anyway"] = None
    return list(warnings)


def unused_runs(tables: list[Table], runs: list[RunRecord]) -> list[RunRecord]:
    """Runs of the tabulated datasets that no cell shows (e.g. DML on ImageNet)."""
    used = {id(r) for t in tables for row in t.rows for c in row.cells.values() for r in c.runs}
    datasets = {t.dataset for t in tables}
    return [r for r in runs if r.dataset in datasets and id(r) not in used]
