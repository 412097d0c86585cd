"""``okd reproduce``: the exact ``okd train`` commands behind a table of the paper, or run them."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reproduce", help="print (or run) the training commands of a paper table",
                       description="Print one `okd train` command per cell and seed of a table of the paper, with run "
                       "folders that `okd report OUT_ROOT` finds; --run executes them in sequence. Arguments after "
                       "`--` are passed to every `okd train` (e.g. -- --device cuda:1 --amp).")
    p.add_argument("--table", required=True, help="cifar100 | imagenet | ablation | successors (KDCL, PCL, MCL: their published CIFAR-100 cells)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of every cell (default: 0)")
    p.add_argument("--data", default="./data", help="CIFAR-100 / ImageNet location (default ./data)")
    p.add_argument("--out-root", default="runs", help="parent folder of the run folders (default runs)")
    p.add_argument("--dataset", help="run a CIFAR table's layout on another dataset (e.g. digits) for a quick check")
    p.add_argument("--arch", action="append", help="only these backbones (repeatable)")
    p.add_argument("--method", action="append", help="only these methods (repeatable)")
    p.add_argument("--run", dest="execute", action="store_true",
                   help="run the commands one after another, stopping at the first failure")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from okd.report.reproduce import command_lines, run_jobs, table_jobs

    extra = list(args.train_args)
    if extra and extra[0] == "--":
        extra = extra[1:]
    jobs = table_jobs(args.table, args.seeds, args.dataset, args.arch, args.method)
    dataset = jobs[0].dataset if jobs else args.table
    then = f"okd report {args.out_root} --dataset {dataset} --paper"
    if args.table in ("ablation", "successors"):
        then += f" --table {args.table}"
    if not args.execute:
        print(f"# {len(jobs)} runs for table {args.table} (seeds {' '.join(map(str, args.seeds))}); then: {then}")
        print("\n".join(command_lines(jobs, args.out_root, args.data, extra)))
        return 0
    code = run_jobs(jobs, args.out_root, args.data, extra, log=lambda line: print(line, flush=True))
    if code == 0:
        print(f"# all {len(jobs)} runs finished; report with: {then}")
    else:
        print(f"okd reproduce: stopped at the first failed run (exit code {code})", file=sys.stderr)
    return code
