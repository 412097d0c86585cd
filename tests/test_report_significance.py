"""okd report --vs-baseline: Welch's interval for (method − baseline) against textbook values and
hand-computed intervals, and the table a user reads it from."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from okd.cli.main import main
from okd.report.significance import student_t_cdf, student_t_quantile, welch_difference

TINY = ["--dataset", "synthetic", "--synthetic-train", "32", "--synthetic-test", "16", "--synthetic-classes", "5",
        "--synthetic-size", "16", "--batch-size", "16", "--epochs", "1", "--quiet", "--device", "cpu"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("df, p, expected", [(1, 0.975, 12.7062), (2, 0.975, 4.3027), (4, 0.975, 2.7764),
                                             (10, 0.975, 2.2281), (30, 0.975, 2.0423), (5, 0.95, 2.0150),
                                             (3, 0.025, -3.1824)])
def test_t_quantiles_match_the_printed_tables(df: float, p: float, expected: float) -> None:
    assert student_t_quantile(p, df) == pytest.approx(expected, abs=5e-5)


def test_t_cdf_closed_forms() -> None:
    assert student_t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)  # Cauchy: 1/2 + atan(t)/pi
    for t in (-3.0, -0.4, 0.0, 1.0, 2.5):  # df 2: 1/2 + t / (2 sqrt(2 + t^2))
        assert student_t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
    assert student_t_cdf(1.7, 1e7) == pytest.approx(0.5 * (1 + math.erf(1.7 / math.sqrt(2))), abs=1e-6)  # -> normal


def test_welch_interval_by_hand() -> None:
    # Equal stds and n = 3 on both sides: df = 4 exactly, half-width t(0.975, 4) * sqrt(2 s^2 / 3).
    diff = welch_difference(20.0, 0.6, 3, 21.0, 0.6, 3)
    half = 2.7764451052 * math.sqrt(2 * 0.36 / 3)
    assert diff.df == pytest.approx(4.0)
    assert (diff.mean, diff.low, diff.high) == pytest.approx((-1.0, -1.0 - half, -1.0 + half))
    assert not diff.beyond_noise  # -1 +- 1.36 contains 0
    assert welch_difference(18.0, 0.6, 3, 21.0, 0.6, 3).beyond_noise
    # Unequal: var 0.25/3 and 0.09/3, df = se^4 / (var1^2/2 + var2^2/2).
    unequal = welch_difference(20.0, 0.5, 3, 21.0, 0.3, 3)
    v1, v2 = 0.25 / 3, 0.09 / 3
    assert unequal.df == pytest.approx((v1 + v2) ** 2 / (v1 * v1 / 2 + v2 * v2 / 2))
    one_run = welch_difference(20.0, None, 1, 21.0, 0.3, 3)
    assert (one_run.mean, one_run.low, one_run.high, one_run.beyond_noise) == (-1.0, None, None, False)
    constant = welch_difference(20.0, 0.0, 3, 21.0, 0.0, 3)
    assert (constant.low, constant.high, constant.beyond_noise) == (-1.0, -1.0, True)


def _copy(src: Path, dst: Path, method: str, seed: int, top1: float) -> None:
    shutil.copytree(src, dst)
    summary = json.loads((dst / "summary.json").read_text())
    summary.update(method=method, seed=seed)
    summary["config"].update(method=method, seed=seed)
    summary["last"]["deployed"]["top1"] = top1
    (dst / "summary.json").write_text(json.dumps(summary))


def test_vs_baseline_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Baseline 50/51/52, DML 40/41/42 (beyond the noise), CL-ILR 50.5/51.5/52.5 (within it), ONE one run."""
    assert main(["train", *TINY, "--method", "baseline", "--out", str(tmp_path / "real_baseline")]) == 0
    assert main(["train", *TINY, "--method", "dml", "--num-peers", "2", "--out", str(tmp_path / "real_dml")]) == 0
    root = tmp_path / "runs"
    for seed in range(3):
        _copy(tmp_path / "real_baseline", root / f"baseline{seed}", "baseline", seed, 50.0 + seed)
        _copy(tmp_path / "real_dml", root / f"dml{seed}", "dml", seed, 40.0 + seed)
        _copy(tmp_path / "real_dml", root / f"cl_ilr{seed}", "cl_ilr", seed, 50.5 + seed)
    _copy(tmp_path / "real_dml", root / "one0", "one", 0, 51.5)
    capsys.readouterr()
    assert main(["report", str(root), "--table", "main", "--vs-baseline"]) == 0
    out = capsys.readouterr().out
    section = out[out.index("#### Difference from the baseline"):]
    header = next(line for line in section.splitlines() if line.startswith("| Model"))
    row = next(line for line in section.splitlines() if line.startswith("| ResNet-32"))
    cells = dict(zip([c.strip() for c in header.split("|")[1:-1]], [c.strip() for c in row.split("|")[1:-1]]))
    half = 2.7764451052 * math.sqrt(2 / 3)
    assert cells["DML"] == f"-10.00 [{-10 - half:+.2f}, {-10 + half:+.2f}] *"
    assert cells["CL-ILR"] == f"+0.50 [{0.5 - half:+.2f}, {0.5 + half:+.2f}]"
    assert cells["ONE"] == "+0.50 (one run: no interval)"
    assert cells["OKDDip"] == cells["MCL-OKD"] == "—"
    assert main(["report", str(root), "--vs-baseline", "--format", "json"]) == 2
    assert capsys.readouterr().err.strip() == ("okd report: error: --vs-baseline is drawn in Markdown only; "
                                               "drop --format json (or --vs-baseline)")
