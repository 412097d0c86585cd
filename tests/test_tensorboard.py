"""--tensorboard mirrors metrics.jsonl into a TensorBoard event file, and fails clearly without the package."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from okd.cli.main import main

TINY = ["--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8", "--synthetic-classes", "3",
        "--synthetic-size", "16", "--batch-size", "8", "--epochs", "2", "--quiet", "--device", "cpu",
        "--method", "dml", "--num-peers", "2", "--limit-batches", "1"]


def test_event_file_holds_lr_loss_terms_and_test_errors(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["train", *TINY, "--tensorboard", "--out", str(tmp_path / "run")]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    terms = set(records[-1]["train"])
    assert {"ce", "total"} <= terms and len(terms) > 2  # DML logs its KL term too
    heads = {"peer0", "peer1", "peer_mean", "ensemble", "deployed"}
    assert heads <= set(records[-1]["test"])
    expected = {"lr"} | {f"train/{t}" for t in terms} | {f"test_error_top1/{h}" for h in heads}
    assert expected <= tags, expected - tags

    def series(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in events.Scalars(tag)]

    epochs = [r["epoch"] for r in records]
    assert len(epochs) == 2
    assert series("lr") == [(e, pytest.approx(r["lr"])) for e, r in zip(epochs, records)]
    for term in terms:
        assert series(f"train/{term}") == [(e, pytest.approx(r["train"][term])) for e, r in zip(epochs, records)]
    for head in heads:
        assert series(f"test_error_top1/{head}") == [
            (e, pytest.approx(r["test"][head]["top1"])) for e, r in zip(epochs, records)]


def test_missing_tensorboard_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for module in ("tensorboard", "torch.utils.tensorboard"):
        monkeypatch.setitem(sys.modules, module, None)  # `import` of a None entry raises ImportError
    code = main(["train", *TINY, "--tensorboard", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "--tensorboard" in err and "pip install 'okd-torch[tensorboard]'" in err
