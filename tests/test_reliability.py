"""Runs survive SIGTERM, SIGKILL (even mid-save), NaN losses and hostile input, and never leak memory."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint
from okd.engine.rundir import read_metrics

TINY = ["--dataset", "synthetic", "--synthetic-train", "64", "--synthetic-test", "16", "--synthetic-classes", "4",
        "--batch-size", "8", "--eval-batch-size", "16", "--quiet", "--device", "cpu", "--method", "dml", "--num-peers", "2"]


def okd_process(out: Path, *extra: str, prelude: str = "") -> subprocess.Popen:
    """`okd train` in a child process (optionally after some Python that patches the engine)."""
    code = f"{prelude}\nimport sys\nfrom okd.cli.main import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "train", *TINY, "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reliability") / "full"
    assert main(["train", *TINY, "--out", str(out), "--epochs", "3"]) == 0
    return out


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)


def test_sigterm_mid_epoch_saves_and_resumes_exactly(tmp_path: Path, uninterrupted: Path) -> None:
    out = tmp_path / "run"
    # Slow each step a little so the signal lands mid-epoch, after the first epoch ended.
    slow = "import time, okd.methods.dml as m\n_l = m.DML.losses\nm.DML.losses = lambda *a: (time.sleep(0.05), _l(*a))[1]"
    proc = okd_process(out, "--epochs", "3", prelude=slow)
    _wait_for(lambda: len(read_metrics(out / "metrics.jsonl")) >= 1)
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Resume with: okd train --out" in stdout
    state = load_checkpoint(out / "last.pt")
    assert state["step"] > 0, "expected a mid-epoch checkpoint"
    assert main(["train", *TINY, "--out", str(out), "--epochs", "3", "--resume"]) == 0
    assert_same_weights(out / "last.pt", uninterrupted / "last.pt")
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


def test_sigkill_during_checkpoint_write_leaves_a_loadable_run(tmp_path: Path, uninterrupted: Path) -> None:
    out = tmp_path / "run"
    # Make the rename of the 2nd checkpoint hang, then kill -9 while it is in flight.
    hang = (
        "import os, time, okd.engine.checkpoint as c\n_r = os.replace\nn = [0]\n"
        "def slow_replace(a, b):\n    n[0] += 1\n    if n[0] == 4: open(str(b) + '.inflight', 'w').close(); time.sleep(60)\n    _r(a, b)\n"
        "c.os.replace = slow_replace"
    )
    proc = okd_process(out, "--epochs", "3", prelude=hang)
    _wait_for(lambda: any(out.glob("*.inflight")))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    state = load_checkpoint(out / "last.pt")  # the previous checkpoint, intact
    assert state["epoch"] >= 1
    lines = (out / "metrics.jsonl").read_text()
    assert lines.endswith("\n") and all(json.loads(line) for line in lines.splitlines())
    for leftover in out.glob("*.inflight"):
        leftover.unlink()
    assert main(["train", *TINY, "--out", str(out), "--epochs", "3", "--resume"]) == 0
    assert_same_weights(out / "last.pt", uninterrupted / "last.pt")


def test_sigkill_at_a_random_moment(tmp_path: Path, uninterrupted: Path) -> None:
    out = tmp_path / "run"
    proc = okd_process(out, "--epochs", "3")
    _wait_for(lambda: (out / "last.pt").exists())
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    load_checkpoint(out / "last.pt")
    read_metrics(out / "metrics.jsonl")
    assert main(["train", *TINY, "--out", str(out), "--epochs", "3", "--resume"]) == 0
    assert_same_weights(out / "last.pt", uninterrupted / "last.pt")


def test_non_finite_loss_stops_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import okd.methods.dml as dml

    original = dml.DML.losses

    def poisoned(self, output, batch, epoch):
        losses = original(self, output, batch, epoch)
        if epoch == 1:
            losses["kd"] = losses["kd"] * float("nan")
        return losses

    monkeypatch.setattr(dml.DML, "losses", poisoned)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 2, step 0 (term: kd)" in err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # the last good checkpoint is kept


def test_skip_step_policy_skips_non_finite_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import okd.methods.dml as dml

    original = dml.DML.losses
    calls = {"n": 0}

    def sometimes_nan(self, output, batch, epoch):
        losses = original(self, output, batch, epoch)
        calls["n"] += 1
        if calls["n"] == 2:
            losses["ce"] = losses["ce"] * float("inf")
        return losses

    monkeypatch.setattr(dml.DML, "losses", sometimes_nan)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--epochs", "1", "--nan-policy", "skip-step"]) == 0
    state = load_checkpoint(out / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert "skipped step 1 of epoch 1" in (out / "train.log").read_text()


INVALID = {
    "--lr": ["0", "-1", "nan", "inf", "abc"],
    "--epochs": ["0", "-3", "1.5", "x"],
    "--batch-size": ["0", "-8"],
    "--num-peers": ["0", "1"],
    "--nce-k": ["0", "-5", "100000"],
    "--nce-m": ["1", "-0.1", "2"],
    "--wd": ["-1", "nan"],
    "--momentum": ["-0.5"],
    "--share": ["sideways", "tree"],
    "--method": ["distill", ""],
    "--arch": ["resnet0", "dml_"],
    "--dataset": ["cifar10"],
    "--limit-batches": ["0", "-1"],
    "--seed": ["-1", "one"],
    "--kd-t": ["0", "-2"],
    "--device": ["tpu", "cuda:x"],
    "--nan-policy": ["ignore"],
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(sorted(INVALID)), data=st.data())
def test_random_invalid_values_never_give_a_traceback(tmp_path: Path, option: str, data: st.DataObject) -> None:
    value = data.draw(st.sampled_from(INVALID[option]))
    out = tmp_path / f"run{abs(hash((option, value)))}"
    args = ["train", *TINY, "--method", "mcl_okd", "--epochs", "1", "--out", str(out), option, value]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    assert code == 2, (option, value)
    assert not (out / "last.pt").exists()


def test_invalid_config_file_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for text, message in [("lr: -1\n", "--lr must be > 0"), ("epochs: many\n", "option epochs has an invalid value"),
                          ("- a\n- b\n", "must hold a mapping"), ("nce_k: [1\n", "not valid YAML")]:
        config = tmp_path / "c.yaml"
        config.write_text(text)
        assert main(["train", *TINY, "--out", str(tmp_path / "r"), "--config", str(config)]) == 2
        assert message in capsys.readouterr().err


def test_memory_does_not_grow_across_epochs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--epochs", "6", "--method", "mcl_okd", "--num-peers", "2", "--nce-k", "16"]) == 0
    rss = [r["rss_mb"] for r in read_metrics(out / "metrics.jsonl")]
    assert len(rss) == 6 and rss[5] - rss[0] < 8, rss


def test_disk_full_mid_run_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC from the second checkpoint write on: a clear error, epoch 1's last.pt intact, no temp files."""
    import errno

    import okd.engine.checkpoint as checkpoint

    real_save = checkpoint.save_checkpoint
    saves = {"n": 0}

    def full_disk_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def counting_save(path: Path, state: dict) -> None:
        saves["n"] += 1
        if saves["n"] > 1:  # the first epoch's checkpoints get through, then the disk is full
            monkeypatch.setattr(checkpoint.os, "fsync", full_disk_fsync)
        real_save(path, state)

    import okd.engine.trainer as trainer

    monkeypatch.setattr(trainer, "save_checkpoint", counting_save)
    out = tmp_path / "run"
    code = main(["train", *TINY, "--out", str(out), "--epochs", "3"])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert code == 2
    assert "No space left on device" in err and "traceback" not in err.lower()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert not list(out.glob(".*.tmp"))
    assert all(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())
