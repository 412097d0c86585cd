"""The engine end to end through the CLI: run folder, resume, eval, and clear errors on bad input."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint
from okd.engine.schedule import learning_rate

TINY = ["--dataset", "synthetic", "--synthetic-train", "48", "--synthetic-test", "20", "--synthetic-classes", "5",
        "--batch-size", "16", "--eval-batch-size", "10", "--quiet", "--device", "cpu"]


def train(out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--out", str(out), *extra])


def test_train_writes_the_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "2") == 0
    for name in ("config.yaml", "metrics.jsonl", "last.pt", "best.pt", "summary.json", "train.log"):
        assert (out / name).exists(), name
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    test = records[-1]["test"]
    assert {"peer0", "peer_mean", "deployed", "ensemble"} <= set(test)
    assert 0 <= test["ensemble"]["top1"] <= 100 and test["ensemble"]["top5"] <= test["ensemble"]["top1"]
    assert records[0]["lr"] == pytest.approx(0.05) and records[1]["lr"] == pytest.approx(0.025)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["params"]["deployed"] == 472_756 - 95 * 65  # 5 classes
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and state["config"]["method"] == "baseline"


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    assert train(tmp_path / "full", "--epochs", "2") == 0
    assert train(tmp_path / "split", "--epochs", "1") == 0
    assert train(tmp_path / "split", "--epochs", "2", "--resume") == 0
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    split = load_checkpoint(tmp_path / "split" / "last.pt")
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key
    momentum = lambda s: [v["momentum_buffer"] for v in s["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(momentum(full), momentum(split)))
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_existing_run_is_never_overwritten_unless_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "1") == 0
    before = (out / "last.pt").read_bytes()
    assert train(out, "--epochs", "1") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before
    assert train(out, "--epochs", "1", "--overwrite", "--seed", "3") == 0
    assert load_checkpoint(out / "last.pt")["config"]["seed"] == 3


def test_resume_with_another_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "1") == 0
    assert train(out, "--epochs", "2", "--lr", "0.2", "--resume") == 2
    err = capsys.readouterr().err
    assert "another config" in err and "lr" in err and "Traceback" not in err


def test_eval_reports_every_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "1", "--method", "baseline") == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "best.pt"), "--device", "cpu", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["test"]
    assert result["errors"]["ensemble"] == pytest.approx(logged["ensemble"])
    assert set(result["errors"]) == {"peer0", "ensemble", "peer_mean", "deployed"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "nope"], "unknown method 'nope'"),
        (["--arch", "resnet9"], "unknown backbone 'resnet9'"),
        (["--dataset", "svhn"], "unknown dataset 'svhn'"),
        (["--lr", "0"], "--lr must be > 0"),
        (["--batch-size", "0"], "--batch-size must be > 0"),
        (["--method", "dml", "--num-peers", "1"], "needs --num-peers >= 2"),
        (["--method", "one", "--share", "early"], "supports --share late"),
        (["--dataset", "cifar100"], "--data is required"),
    ],
)
def test_bad_training_input_gives_one_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert train(tmp_path / "run", *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "last.pt").exists()


def test_unknown_config_key_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\nlearning_rate: 0.1\n")
    assert train(tmp_path / "run", "--config", str(config)) == 2
    assert "unknown option 'learning_rate'" in capsys.readouterr().err


def test_config_file_values_and_flag_precedence(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\nlr: 0.2\nnum-peers: 1\n")
    assert train(tmp_path / "run", "--config", str(config), "--lr", "0.01") == 0
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["config"]
    assert saved["epochs"] == 1 and saved["lr"] == 0.01


def test_unwritable_output_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert train(blocker / "run", "--epochs", "1") == 2
    assert "cannot write to output folder" in capsys.readouterr().err


def test_corrupt_and_foreign_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint")
    assert main(["eval", "--checkpoint", str(corrupt)]) == 2
    assert "corrupt or not a PyTorch checkpoint" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert main(["eval", "--checkpoint", str(foreign)]) == 2
    assert "not an okd checkpoint" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


class _Exploit:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "okd-checkpoint-v1", "model": _Exploit(str(marker))}, evil, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    assert main(["eval", "--checkpoint", str(evil)]) == 2
    assert "refusing to load" in capsys.readouterr().err
    assert not marker.exists()


def test_cosine_schedule_matches_reference_values() -> None:
    values = [learning_rate(e, 0.1, 300) for e in (0, 75, 150, 225, 299)]
    assert values == pytest.approx([0.1, 0.0854, 0.05, 0.0146, 2.7e-6], abs=1e-4)
