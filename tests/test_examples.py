"""Every script in examples/ runs (at smoke size) and prints what it promises; the plugin example
works with the okd command: trained with --plugin, then resumed, evaluated and exported naming it again
(a checkpoint never imports its plugins by itself)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # child processes that import torch and train a few steps

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
EXPECTED = {  # script: lines its output must contain, in order (regular expressions)
    "my_models.py": [],  # a plugin: importing it only registers small_cnn and avg_teacher
    "own_backbone.py": [r"^dml: test top-1 error of the deployed peer \d+\.\d\d%, of the ensemble \d+\.\d\d% \(24,346 parameters\)$",
                        r"^avg_teacher: test top-1 error .* \(24,346 parameters\)$",
                        r"^Backbone predicts \[(\d, ){7}\d\] for digits \[7, 9, 4, 7, 0, 2, 6, 1\]$"],
    "notebook_quickstart.py": [r"^after 1 epochs: deployed peer \d+\.\d\d% top-1 error$",
                               r"^after 2 epochs: deployed peer \d+\.\d\d% top-1 error$",
                               r"^\s+peer0: top-1 error", r"^\s+ensemble: top-1 error", r"^\s+deployed: top-1 error",
                               r"^predicted \[(\d, ){9}\d\]$", r"^\s+labels \[7, 9, 4, 7, 0, 2, 6, 1, 3, 1\]$"],
}
TINY = ["--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8", "--synthetic-classes", "4",
        "--batch-size", "8", "--eval-batch-size", "8", "--device", "cpu", "--quiet", "--num-peers", "2"]


def env(*paths: Path) -> dict[str, str]:
    return {**os.environ, "OKD_EXAMPLE_SMOKE": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO / "src"), *map(str, paths)])}


def run(args: list[str], cwd: Path, *paths: Path) -> str:
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=env(*paths), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_example_runs(script: str, tmp_path: Path) -> None:
    lines = run([str(EXAMPLES / script)], tmp_path).splitlines()
    position = 0
    for pattern in EXPECTED[script]:
        found = next((i for i in range(position, len(lines)) if re.search(pattern, lines[i])), None)
        assert found is not None, f"{pattern!r} not in the output after line {position}:\n" + "\n".join(lines)
        position = found + 1
    if not EXPECTED[script]:
        assert lines == []


def test_plugin_with_the_okd_command(tmp_path: Path) -> None:
    out = tmp_path / "run"
    mine = ["--arch", "small_cnn", "--method", "avg_teacher", "--out", str(out)]
    run(["-m", "okd", "train", *TINY, *mine, "--plugin", "my_models", "--epochs", "1"], tmp_path, EXAMPLES)
    assert "plugins:\n- my_models\n" in (out / "config.yaml").read_text()
    # each later command names the plugin again: a checkpoint never imports it by itself
    mine += ["--plugin", "my_models"]
    run(["-m", "okd", "train", *TINY, *mine, "--epochs", "2", "--resume"], tmp_path, EXAMPLES)
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    result = json.loads(run(["-m", "okd", "eval", "--checkpoint", str(out / "last.pt"), "--format", "json", "--plugin", "my_models"],
                            tmp_path, EXAMPLES))
    assert (result["method"], result["arch"], result["epoch"]) == ("avg_teacher", "small_cnn", 2)
    printed = run(["-m", "okd", "export", "--checkpoint", str(out / "last.pt"), "--out", str(tmp_path / "m.pt"), "--plugin", "my_models"],
                  tmp_path, EXAMPLES)
    assert "avg_teacher small_cnn peer 0 (4 classes" in printed and "max |logit difference| vs checkpoint 0.00e+00" in printed
    # where the plugin cannot be imported: exit 2 with the module's name
    failed = subprocess.run([sys.executable, "-m", "okd", "eval", "--checkpoint", str(out / "last.pt"), "--plugin", "my_models"], cwd=tmp_path,
                            env=env(), capture_output=True, text=True, timeout=600)
    assert failed.returncode == 2
    assert "cannot import plugin 'my_models': No module named 'my_models'" in failed.stderr
