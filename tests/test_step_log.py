"""Progress lines inside an epoch when stdout is a file: every --log-interval steps or 30 seconds."""

from __future__ import annotations

import re
import sys

import torch

from okd.engine.step_log import StepLog
from process_helpers import pause_prelude, wait_for

LINE = re.compile(r"^epoch 1/1  step (\d+)/4  loss \d+\.\d{4}  \d+\.\d img/s  ETA \d+:\d\d:\d\d \(epoch\)$", re.M)


def test_a_run_logging_to_a_file_prints_step_lines_mid_epoch(tmp_path) -> None:
    """The child pauses before its third step: lines for steps 1 and 2 must already be in the file."""
    import subprocess

    log = tmp_path / "train.out"
    args = ["--dataset", "synthetic", "--synthetic-train", "32", "--synthetic-test", "8", "--synthetic-size", "16",
            "--batch-size", "8", "--epochs", "1", "--limit-batches", "4", "--method", "dml", "--num-peers", "2",
            "--device", "cpu", "--workers", "0", "--log-interval", "1", "--out", str(tmp_path / "run")]
    code = f"{pause_prelude(tmp_path, 0, 2)}\nimport sys\nfrom okd.cli.main import main\nsys.exit(main(sys.argv[1:]))"
    with open(log, "w") as handle:
        child = subprocess.Popen([sys.executable, "-c", code, "train", *args], stdout=handle, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "paused").exists() or child.poll() is not None)
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        wait_for(lambda: len(LINE.findall(log.read_text())) == 2 or child.poll() is not None)
        assert [int(s) for s in LINE.findall(log.read_text())] == [1, 2]  # before step 3 ran
        (tmp_path / "go").touch()
        assert child.wait(timeout=900) == 0
    finally:
        if child.poll() is None:
            child.kill()
    text = log.read_text()
    assert [int(s) for s in LINE.findall(text)] == [1, 2, 3]  # the last step is reported by the epoch's own line
    assert "epoch 1/1  loss" in text


def test_a_line_at_least_every_30_seconds_and_silent_when_disabled() -> None:
    now = [0.0]
    written: list[str] = []

    def make(enabled: bool) -> StepLog:
        return StepLog(written.append, enabled=enabled, label="epoch 2/5", steps=100, start_step=10, interval=1000,
                       clock=lambda: now[0])

    log = make(True)
    total = torch.tensor(30.0)
    for done in range(11, 15):
        now[0] += 10.0  # 10 s a step: lines after 30 s of silence, never every step
        log.step(done, images=8 * (done - 10), loss_sum=total, loss_steps=done)
    assert written == ["epoch 2/5  step 13/100  loss 2.3077  0.8 img/s  ETA 0:14:30 (epoch)"]
    quiet = make(False)
    now[0] += 1000.0
    quiet.step(50, images=8, loss_sum=total, loss_steps=50)
    assert len(written) == 1
