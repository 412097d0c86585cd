"""``okd report``: the paper's tables (Markdown, CSV or JSON) from finished run folders."""

from __future__ import annotations

import argparse
import sys

from okd.errors import OKDUserError
from okd.plugins import add_plugin_argument, import_plugins


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="the paper's tables from run folders",
                       description="Collect finished runs (summary.json) and print the paper's tables: top-1 error of the "
                       "deployed peer and, in parentheses, of the method's ensemble. Runs no table shows (e.g. newer methods) follow "
                       "in a list with every head, the method's own ones (EMA peers, fusion heads) under their names. "
                       "Unfinished runs are skipped.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders, or folders searched recursively for summary.json")
    p.add_argument("--format", choices=("markdown", "csv", "json"), default="markdown")
    p.add_argument("--dataset", help="only this dataset's runs (default: one set of tables per dataset found)")
    p.add_argument("--table", action="append", choices=("main", "imagenet", "ablation", "successors", "peers"),
                   help="only these tables (repeatable; default: main + ablation, or imagenet for ImageNet runs; then "
                   "successors (KDCL, PCL, MCL) and peers (every peer of each cohort of different backbones, --arch a,b) "
                   "where such runs exist)")
    p.add_argument("--arch", action="append", metavar="ARCH",
                   help="only these backbones' rows (repeatable; a,b: that cohort of different backbones; default: every "
                   "row of the paper's table)")
    p.add_argument("--epoch", choices=("last", "best"), default="last",
                   help="last epoch (default) or best epoch per head (selected on the test set: optimistic)")
    p.add_argument("--paper", action="store_true", help="show the original paper's figures and our difference")
    p.add_argument("--vs-baseline", action="store_true",
                   help="after each table, every method's deployed error minus the baseline's with Welch's 95%% interval "
                   "over seeds, marked * where it exceeds the seed noise (Markdown)")
    p.add_argument("--plot", metavar="FILE.png", help="also draw the tables as a bar chart (needs okd-torch[plot])")
    add_plugin_argument(p, "; a run's own plugins are never imported unless named here")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from okd.models import arch_label
    from okd.report.collect import collect_runs
    from okd.report.render import to_csv, to_json, to_markdown
    from okd.report.tables import build_tables, consistency_warnings, dataset_order, unused_runs

    if args.vs_baseline and args.format != "markdown":
        raise OKDUserError(f"--vs-baseline is drawn in Markdown only; drop --format {args.format} (or --vs-baseline)")
    if args.plot:
        from okd.report.plots import require_matplotlib

        require_matplotlib()
    collection = collect_runs(args.runs)
    for path, why in collection.skipped:
        print(f"okd report: skipped {path}: {why}", file=sys.stderr)
    runs = collection.runs
    import_plugins(args.plugins)
    _note_saved_plugins(runs)
    if not runs:
        raise OKDUserError(f"no finished runs in {' '.join(args.runs)} ({len(collection.skipped)} skipped)")
    present = dataset_order({r.dataset for r in runs})
    if args.dataset is not None and args.dataset not in present:
        raise OKDUserError(f"no finished runs of dataset {args.dataset!r}; found: {', '.join(present)}")
    datasets = [args.dataset] if args.dataset else present
    kinds = tuple(dict.fromkeys(args.table)) if args.table else None
    tables = build_tables(runs, datasets, kinds, args.epoch, args.paper)
    if args.arch:
        from okd.models import format_arch, parse_arch

        wanted = {format_arch(parse_arch(a)) for a in args.arch}
        for table in tables:
            table.rows = [row for row in table.rows if row.arch in wanted]
        tables = [t for t in tables if t.rows or t.kind != "peers"]
    for warning in consistency_warnings(tables):
        print(f"okd report: note: {warning}", file=sys.stderr)
    others = [] if args.table else unused_runs(tables, runs)
    for extra in others:
        print(f"okd report: note: {extra.path} ({extra.method} {arch_label(extra.arch)} on {extra.dataset}) is in none of the tables",
              file=sys.stderr)
    if args.format == "csv":
        sys.stdout.write(to_csv(tables))
    elif args.format == "json":
        print(to_json(tables, collection.skipped, others, args.epoch))
    else:
        print(to_markdown(tables, others, args.epoch, args.vs_baseline), end="")
    if args.plot:
        from okd.report.plots import plot_tables

        path = plot_tables(tables, args.plot)
        print(f"okd report: wrote {path}", file=sys.stderr)
    return 0


def _note_saved_plugins(runs: list) -> None:
    """A run folder never imports code by itself, and a report needs no model: a run's plugin that
    the user did not name (--plugin) is a note (its sizes and --arch names may be unknown), not an error."""
    for name in dict.fromkeys(p for run in runs for p in (run.config.get("plugins") or [])):
        if name not in sys.modules:
            print(f"okd report: note: runs name plugin {name!r}, not imported (a run folder never imports code by itself; "
                  f"--plugin {name} lets the report know its backbones)", file=sys.stderr)
