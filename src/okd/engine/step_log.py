"""Progress lines inside an epoch for logs nobody watches live (a batch job, ``nohup``, a pipe).

On a terminal the progress bar shows the epoch as it runs; written to a file, the bar is off and a
2-hour epoch would be silent until it ends. There, a line with the running loss, the speed and the
epoch's ETA is printed every ``interval`` steps or every ``seconds``, whichever comes first (what
timm's log interval does). Reading the loss syncs the device, so it happens only when a line is due.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch

SECONDS = 30.0  # at most this long between two lines, however slow a step is


def clock_text(seconds: float) -> str:
    seconds = max(0, int(seconds + 0.5))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class StepLog:
    """Decides when a step line is due and writes it with ``write``; silent when ``enabled`` is False."""

    def __init__(self, write: Callable[[str], None], *, enabled: bool, label: str, steps: int, start_step: int,
                 interval: int, seconds: float = SECONDS, clock: Callable[[], float] = time.perf_counter) -> None:
        self.write, self.enabled, self.label, self.steps, self.interval = write, enabled, label, steps, max(1, interval)
        self.seconds, self.clock = seconds, clock
        self.start_step = start_step
        self.began = self.last = clock()

    @classmethod
    def for_stdout(cls, write: Callable[[str], None], *, quiet: bool, **kwargs: Any) -> StepLog:
        """Enabled where stdout is not a terminal (a file or a pipe) and the run is not --quiet."""
        return cls(write, enabled=not quiet and not sys.stdout.isatty(), **kwargs)

    def step(self, done: int, images: int, loss_sum: torch.Tensor | None, loss_steps: int) -> None:
        """After step ``done`` (1-based) of the epoch: ``images`` seen since ``start_step``, and the epoch's loss sum
        over ``loss_steps`` steps (a device tensor, read only if a line is written)."""
        if not self.enabled or done >= self.steps:  # the epoch's own line follows the last step
            return
        now = self.clock()
        if done % self.interval and now - self.last < self.seconds:
            return
        self.last = now
        elapsed = max(now - self.began, 1e-9)
        ran = done - self.start_step
        loss = f"{float(loss_sum) / max(loss_steps, 1):.4f}" if loss_sum is not None else "n/a"
        eta = clock_text(elapsed / max(ran, 1) * (self.steps - done))
        self.write(f"{self.label}  step {done}/{self.steps}  loss {loss}  {images / elapsed:.1f} img/s  ETA {eta} (epoch)")
