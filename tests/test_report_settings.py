"""okd report never averages runs that differ in more than the seed, and leaves out what no run fills.

One real tiny DML and one baseline run, copied into variants (another seed, another lr, another
kd_t) and relabelled as a user's data set (digits: no paper layout to fill): each setting must be
its own row, a baseline must sit beside every DML setting it matches, and the paper's empty
backbone rows and ablation table appear only with --paper.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from okd.cli.main import main

TINY = ["--dataset", "synthetic", "--synthetic-train", "32", "--synthetic-test", "16", "--synthetic-classes", "5",
        "--synthetic-size", "16", "--batch-size", "16", "--epochs", "1", "--quiet", "--device", "cpu", "--lr", "0.1"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _variant(src: Path, dst: Path, seed: int, top1: float, **config: object) -> None:
    shutil.copytree(src, dst)
    summary = json.loads((dst / "summary.json").read_text())
    summary.update(dataset="digits", seed=seed)
    summary["config"].update(dataset="digits", seed=seed, **config)
    summary["last"]["deployed"]["top1"] = top1
    (dst / "summary.json").write_text(json.dumps(summary))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("settings")
    assert main(["train", *TINY, "--method", "baseline", "--out", str(base / "real_baseline")]) == 0
    assert main(["train", *TINY, "--method", "dml", "--num-peers", "2", "--out", str(base / "real_dml")]) == 0
    root = base / "runs"
    _variant(base / "real_baseline", root / "baseline_s0", 0, 50.0)
    _variant(base / "real_dml", root / "dml_s0", 0, 40.0)
    _variant(base / "real_dml", root / "dml_s1", 1, 42.0)
    _variant(base / "real_dml", root / "dml_lr_s0", 0, 10.0, lr=0.02)
    _variant(base / "real_dml", root / "dml_kdt_s0", 0, 30.0, kd_t=2.0)
    return root


def _rows(capsys: pytest.CaptureFixture[str], root: Path, *extra: str) -> list[dict]:
    capsys.readouterr()
    assert main(["report", str(root), "--format", "json", *extra]) == 0
    tables = json.loads(capsys.readouterr().out)["tables"]
    return [dict(row, table=t["table"]) for t in tables for row in t["rows"]]


def test_runs_that_differ_in_more_than_the_seed_are_separate_rows(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = {tuple(sorted(r["setting"].items())): r for r in _rows(capsys, runs) if r["table"] == "main"}
    assert set(rows) == {(("kd_t", None), ("lr", 0.1)), (("kd_t", None), ("lr", 0.02)), (("kd_t", 2.0), ("lr", 0.1))}
    same = rows[(("kd_t", None), ("lr", 0.1))]["cells"]
    assert same["dml"]["n"] == 2 and same["dml"]["top1_mean"] == pytest.approx(41.0)  # seeds 0 and 1 only
    assert rows[(("kd_t", None), ("lr", 0.02))]["cells"]["dml"]["top1_mean"] == 10.0
    assert rows[(("kd_t", None), ("lr", 0.02))]["cells"]["baseline"]["n"] == 0  # the baseline ran at lr 0.1
    assert rows[(("kd_t", 2.0), ("lr", 0.1))]["cells"]["dml"]["top1_mean"] == 30.0
    for setting in ((("kd_t", None), ("lr", 0.1)), (("kd_t", 2.0), ("lr", 0.1))):  # kd_t is no baseline option
        assert rows[setting]["cells"]["baseline"]["top1_mean"] == 50.0
    capsys.readouterr()
    assert main(["report", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "| ResNet-32 (kd_t default, lr 0.02) " in out and "| ResNet-32 (kd_t 2.0, lr 0.1) " in out
    assert "never averaged: one row per setting of kd_t, lr" in out and "aggregated anyway" not in out


def test_rows_and_tables_without_runs_only_with_paper(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(capsys, runs)
    assert {r["table"] for r in rows} == {"main"} and {r["arch"] for r in rows} == {"resnet32"}
    with_paper = _rows(capsys, runs, "--paper")
    assert {"main", "ablation"} <= {r["table"] for r in with_paper} and "densenet40_12" in {r["arch"] for r in with_paper}
