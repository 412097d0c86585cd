"""The ``okd train`` commands behind every cell of the paper's tables, and a sequential runner.

Run folders are named ``<root>/<dataset>/<arch>/<method>[-alpha0]/seed<k>`` so that
``okd report <root>`` finds every cell. The values ``okd train`` would take from its recipe
(epochs, batch size, lr, weight decay, peers, MCL-OKD's nce_k) are resolved by that same recipe code
and written into each command, so a later change of a default cannot change what a printed command
(or a table made from it) means.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from okd.errors import OKDUserError
from okd.report.paper import CIFAR_ROWS, IMAGENET_ROWS, SUCCESSOR_METHODS, published_peers, successor_cells

ALL_METHODS = ("baseline", "dml", "cl_ilr", "one", "okddip", "mcl_okd")
REPRO_TABLES = ("cifar100", "imagenet", "ablation", "successors")
NEEDS_DATA = ("cifar100", "imagenet")  # the embedded/synthetic sets need no --data


@dataclass(frozen=True)
class Job:
    """One run: a cell of a table for one seed."""

    method: str
    arch: str
    dataset: str
    seed: int
    alpha0: bool = False  # the "+MCL" ablation: MCL-OKD without the DOT loss
    num_peers: int | None = None  # pinned where the published figure used another count than the recipe's

    def out(self, root: str | Path) -> Path:
        name = self.method + ("-alpha0" if self.alpha0 else "")
        return Path(root) / self.dataset / self.arch / name / f"seed{self.seed}"

    def train_args(self, root: str | Path, data: str | None, extra: Sequence[str] = ()) -> list[str]:
        args = ["train", "--method", self.method, "--arch", self.arch, "--dataset", self.dataset]
        if data is not None and self.dataset in NEEDS_DATA:
            args += ["--data", str(data)]
        if self.alpha0:
            args += ["--alpha", "0"]
        if self.num_peers is not None:
            args += ["--num-peers", str(self.num_peers)]
        tail = ["--seed", str(self.seed), "--out", str(self.out(root)), *extra]
        return args + recipe_flags(args + tail) + tail


# okd train's config fields that its recipe fills when unset, and their flags
RECIPE_FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr", "wd": "--wd",
                "num_peers": "--num-peers", "nce_k": "--nce-k"}


@lru_cache(maxsize=1)
def _train_parser() -> argparse.ArgumentParser:
    from okd.cli.main import build_parser

    return build_parser()


def recipe_flags(train_argv: Sequence[str]) -> list[str]:
    """The flags that pin the recipe values ``okd train train_argv`` would fill in (none for values it sets)."""
    from okd.cli.train import config_from_args
    from okd.engine.recipe import resolve_config

    try:
        given = config_from_args(_train_parser().parse_args(list(train_argv)))
    except SystemExit:  # argparse already printed why
        raise OKDUserError(f"not a valid okd train command: {shlex.join(train_argv)}") from None
    # where the data lies does not change the recipe; a missing --data is okd train's error to report
    resolved = resolve_config(replace(given, data=given.data or "DATA"))
    flags = []
    for field, flag in RECIPE_FLAGS.items():
        if getattr(given, field) is None and getattr(resolved, field) is not None:
            flags += [flag, str(getattr(resolved, field))]
    return flags


def table_jobs(table: str, seeds: Sequence[int], dataset: str | None = None,
               archs: Sequence[str] | None = None, methods: Sequence[str] | None = None) -> list[Job]:
    """Every run of ``table``, seed by seed (a full table for seed 0 exists before seed 1 starts)."""
    if table not in REPRO_TABLES:
        raise OKDUserError(f"unknown table {table!r}; choose one of {', '.join(REPRO_TABLES)}")
    if table == "successors":
        return _successor_jobs(seeds, dataset or "cifar100", archs, methods)
    if table == "imagenet":
        if dataset not in (None, "imagenet"):
            raise OKDUserError("--table imagenet always runs on ImageNet; --dataset applies to the CIFAR tables")
        rows, dataset = IMAGENET_ROWS, "imagenet"
        cells = [("baseline", False), ("mcl_okd", False)]
    else:
        rows, dataset = CIFAR_ROWS, dataset or "cifar100"
        if table == "ablation":
            cells = [("baseline", False), ("mcl_okd", True), ("mcl_okd", False)]
        else:
            cells = [(m, False) for m in ALL_METHODS]
    for name, chosen, known in (("--arch", archs, rows), ("--method", methods, ALL_METHODS)):
        unknown = sorted(set(chosen or ()) - set(known))
        if unknown:
            raise OKDUserError(f"{name} {' '.join(unknown)} is not in table {table}; it has: {', '.join(known)}")
    return [
        Job(method, arch, dataset, seed, alpha0)
        for seed in seeds
        for arch in rows
        if not archs or arch in archs
        for method, alpha0 in cells
        if not methods or method in methods
    ]


def _successor_jobs(seeds: Sequence[int], dataset: str, archs: Sequence[str] | None,
                    methods: Sequence[str] | None) -> list[Job]:
    """Every published CIFAR-100 cell of the successor methods (with its published number of peers), and
    the baseline of each of those backbones."""
    cells = successor_cells()
    rows = list(dict.fromkeys(arch for arch, _ in cells))
    for name, chosen, known in (("--arch", archs, rows), ("--method", methods, ("baseline", *SUCCESSOR_METHODS))):
        unknown = sorted(set(chosen or ()) - set(known))
        if unknown:
            raise OKDUserError(f"{name} {' '.join(unknown)} is not in table successors; it has: {', '.join(known)}")
    jobs = []
    for seed in seeds:
        for arch in rows:
            if archs and arch not in archs:
                continue
            wanted = [("baseline", None)] + [(m, published_peers(m)) for a, m in cells if a == arch]
            jobs += [Job(m, arch, dataset, seed, num_peers=n) for m, n in wanted if not methods or m in methods]
    return jobs


def command_lines(jobs: Sequence[Job], root: str | Path, data: str | None, extra: Sequence[str] = ()) -> list[str]:
    """Shell lines: one ``okd train`` per job; ImageNet jobs also get their 8-GPU torchrun form as a comment."""
    lines = []
    for job in jobs:
        args = job.train_args(root, data, extra)
        lines.append(shlex.join(["okd", *args]))
        if job.dataset == "imagenet":
            lines.append("# " + shlex.join(["torchrun", "--nproc_per_node", "8", "-m", "okd", *args]))
    return lines


def _finished(out: Path) -> bool:
    try:
        return bool(json.loads((out / "summary.json").read_text(encoding="utf-8")).get("finished"))
    except (OSError, ValueError):
        return False


Runner = Callable[[list[str]], int]


def _subprocess_runner(argv: list[str]) -> int:
    return subprocess.run(argv, check=False).returncode


def run_jobs(jobs: Sequence[Job], root: str | Path, data: str | None, extra: Sequence[str] = (),
             runner: Runner | None = None, log: Callable[[str], None] = print) -> int:
    """Run the jobs one after another; finished folders are skipped, interrupted ones resumed.

    Returns 0, or the exit code of the first failing run (later ones are not started).
    """
    runner = runner or _subprocess_runner
    for k, job in enumerate(jobs, start=1):
        out = job.out(root)
        if _finished(out):
            log(f"# [{k}/{len(jobs)}] already finished: {out}")
            continue
        args = job.train_args(root, data, extra)
        if (out / "last.pt").is_file():
            args.append("--resume")
        log(f"# [{k}/{len(jobs)}] " + shlex.join(["okd", *args]))
        code = runner([sys.executable, "-m", "okd", *args])
        if code != 0:
            log(f"# run {k}/{len(jobs)} failed with exit code {code}: {out}; stopping")
            return code
    return 0
