"""scripts/fashion_mnist_comparison.sh plans every registered method x seed, skips finished runs, resumes the rest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from okd.methods import get_method_class, list_methods

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fashion_mnist_comparison.sh"


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("xargs") is None, reason="needs bash and xargs")
def test_plan_skips_finished_and_resumes_interrupted(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    done = root / "fashion-mnist" / "resnet32" / "dml" / "seed0"
    done.mkdir(parents=True)
    (done / "summary.json").write_text('{"finished": true}')
    cut = root / "fashion-mnist" / "resnet32" / "kdcl" / "seed1"
    cut.mkdir(parents=True)
    (cut / "last.pt").write_bytes(b"")
    env = {**os.environ, "OKD": "echo", "PYTHON": sys.executable, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run(["bash", str(SCRIPT), str(root), "1", "0 1"], env=env, capture_output=True, text=True, check=True).stdout
    planned = {(w[w.index("--method") + 1], w[w.index("--seed") + 1]): w for w in (line.split() for line in out.splitlines())}
    builtin = [m for m in list_methods() if get_method_class(m).__module__.startswith("okd.methods.")]  # the script's child sees no test plugin
    assert set(planned) == {(m, s) for m in builtin for s in "01"} - {("dml", "0")}
    assert planned[("kdcl", "1")][-1] == "--resume" and planned[("kdcl", "0")][-1] == "--overwrite"
    assert planned[("baseline", "0")][planned[("baseline", "0")].index("--num-peers") + 1] == "1"
    assert all(w[w.index("--num-peers") + 1] == "2" for (m, _), w in planned.items() if m != "baseline")
    assert all("--test-per-class" in w and "fashion-mnist" in w for w in planned.values())


def test_run_times_sums_each_epoch_once_and_skips_unfinished(tmp_path: Path) -> None:
    import json

    def run(name: str, method: str, seconds: list[tuple[int, float]], finished: bool = True) -> None:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "summary.json").write_text(json.dumps({"finished": finished, "method": method}))
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "train_seconds": s}) + "\n" for e, s in seconds))

    run("dml0", "dml", [(1, 60.0), (2, 999.0), (2, 120.0)])  # epoch 2 resumed: its second record counts
    run("dml1", "dml", [(1, 300.0), (2, 300.0)])
    run("base0", "baseline", [(1, 30.0)])
    run("cut", "dml", [(1, 5.0)], finished=False)
    script = Path(__file__).resolve().parents[1] / "scripts" / "run_times.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[2] == "| baseline | 1 | 0.5 | 0.5 | 0.5 |"
    assert lines[3] == "| dml | 2 | 6.5 | 3.0 | 10.0 |"
    assert lines[-1] == "All 3 runs: 0.2 hours of training."
    bad = subprocess.run([sys.executable, str(script), str(tmp_path / "missing")], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("usage:")


def test_readme_figures_are_what_the_committed_records_give(capsys: pytest.CaptureFixture[str]) -> None:
    """The README's Fashion-MNIST tables and times are okd report's and run_times.py's output on results/, verbatim."""
    from okd.cli.main import main

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["report", str(repo / "results"), "--arch", "resnet32", "--table", "main", "--table", "successors",
                 "--vs-baseline"]) == 0
    report = capsys.readouterr().out
    assert report.count("(n=3)") == 13  # the baseline twice, twelve methods once: every run of the comparison
    assert report.replace("### ", "#### ") in readme
    times = subprocess.run([sys.executable, str(repo / "scripts" / "run_times.py"), str(repo / "results" / "fashion-mnist")],
                           capture_output=True, text=True, check=True).stdout
    assert "All 36 runs" in times and times.strip() in readme
