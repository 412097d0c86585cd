"""Child ``okd train`` processes the tests can stop at a known point, and waiting on what they write.

Tests never sleep for a fixed time to order events with a child: on a busy machine any fixed
delay can be too short. They wait for something the child writes (a marker, a checkpoint, a log
line), and the child waits for the test where the order matters (``pause_prelude``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def okd_process(args: list[str], prelude: str = "") -> subprocess.Popen:
    """`okd train ARGS` in a child process (optionally after some Python that patches the engine)."""
    code = f"{prelude}\nimport sys\nfrom okd.cli.main import main\nsys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def pause_prelude(marker_dir: Path, epoch: int, step: int) -> str:
    """Child-process patch for DML runs: before training step ``step`` of epoch ``epoch`` (0-based),
    create ``marker_dir/paused`` and wait for ``marker_dir/go``, so the test acts on a run it knows
    is mid-epoch, however slowly the machine runs it."""
    paused, go = str(marker_dir / "paused"), str(marker_dir / "go")
    return f"""
import os, time, okd.methods.dml as m
_losses, _calls = m.DML.losses, {{}}
def _pausing(self, output, batch, epoch):
    _calls[epoch] = _calls.get(epoch, 0) + 1
    if (epoch, _calls[epoch] - 1) == ({epoch}, {step}):
        open({paused!r}, 'w').close()
        while not os.path.exists({go!r}):
            time.sleep(0.01)
    return _losses(self, output, batch, epoch)
m.DML.losses = _pausing
"""


def wait_for(predicate: Callable[[], bool], timeout: float = 900.0) -> None:
    """Poll ``predicate`` until it holds; the timeout only guards against a hung child."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.05)
