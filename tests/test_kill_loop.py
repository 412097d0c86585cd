"""A kill loop: SIGKILL a run at many points (mid-epoch, in the middle of saving last.pt, before an
epoch's metrics line), continue it each time as a user would (--resume when last.pt exists, else the
same command again), and the run ends bit-identical to one that was never interrupted."""

from __future__ import annotations

import signal
from pathlib import Path

import torch

from process_helpers import okd_process, wait_for

from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint
from okd.engine.rundir import read_metrics

TINY = ["--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8", "--synthetic-classes", "4",
        "--synthetic-size", "16", "--batch-size", "8", "--eval-batch-size", "8", "--quiet", "--device", "cpu",
        "--method", "dml", "--num-peers", "2", "--epochs", "3"]

# Child-process hooks: the N-th time (counted in this process) the run reaches KIND, it marks the
# moment in MARKER and waits to be killed. Kinds: a training step, the rename that publishes a new
# last.pt (its bytes are written and synced), the link that keeps the previous last.pt, an epoch's
# metrics line.
_KILL_AT = """
import os, time
import okd.engine.checkpoint as c, okd.engine.rundir as r, okd.methods.dml as m
KIND, N, MARKER = {kind!r}, {n}, {marker!r}
_seen = {{}}
def _reach(kind):
    _seen[kind] = _seen.get(kind, 0) + 1
    if (kind, _seen[kind]) == (KIND, N):
        open(MARKER, 'w').close()
        while True:
            time.sleep(0.05)
_losses, _replace, _link, _append = m.DML.losses, os.replace, os.link, r.RunDir.append_metrics
def _step(self, *args):
    _reach('step')
    return _losses(self, *args)
def _publish(src, dst):
    if os.path.basename(dst) == 'last.pt':
        _reach('publish')
    return _replace(src, dst)
def _keep(src, dst):
    _reach('keep-previous')
    return _link(src, dst)
def _metrics(self, record):
    _reach('metrics')
    return _append(self, record)
m.DML.losses, c.os.replace, c.os.link, r.RunDir.append_metrics = _step, _publish, _keep, _metrics
"""

# Where each successive process is killed (counted from that process's own start).
KILLS = [("step", 2), ("publish", 1), ("keep-previous", 2), ("metrics", 1), ("step", 3)]


def test_sigkill_anywhere_then_continue_is_bit_identical(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    assert main(["train", *TINY, "--out", str(reference)]) == 0
    out, marker = tmp_path / "run", tmp_path / "killpoint"
    where = []
    for kind, n in KILLS:
        resume = ["--resume"] if (out / "last.pt").exists() else []
        proc = okd_process([*TINY, "--out", str(out), *resume], prelude=_KILL_AT.format(kind=kind, n=n, marker=str(marker)))
        wait_for(lambda: marker.exists() or proc.poll() is not None)  # noqa: B023 - proc is this iteration's
        assert proc.poll() is None, (kind, n, proc.communicate())
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        marker.unlink()
        if (out / "last.pt").exists():
            state = load_checkpoint(out / "last.pt")  # whatever the moment, last.pt is whole
            where.append((state["epoch"], state["step"]))
    assert where == [(1, 0), (1, 0), (2, 0)], where  # no last.pt after the first two kills (a fresh start each time)
    assert main(["train", *TINY, "--out", str(out), "--resume"]) == 0
    final, expected = load_checkpoint(out / "last.pt"), load_checkpoint(reference / "last.pt")
    assert all(torch.equal(final["model"][k], expected["model"][k]) for k in expected["model"])
    timing = ("train_seconds", "train_images_per_s", "rss_mb")  # the only fields that may differ
    strip = lambda records: [{k: v for k, v in r.items() if k not in timing} for r in records]  # noqa: E731
    assert strip(read_metrics(out / "metrics.jsonl")) == strip(read_metrics(reference / "metrics.jsonl"))
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []
