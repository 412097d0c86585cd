"""Optional TensorBoard mirror of metrics.jsonl (``--tensorboard``; needs ``pip install 'okd-torch[tensorboard]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from okd.errors import OKDUserError


def require_tensorboard() -> Any:
    """The SummaryWriter class, or the one-line refusal (checked before the run folder is touched)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise OKDUserError("--tensorboard needs the tensorboard package: pip install 'okd-torch[tensorboard]'") from None
    return SummaryWriter


class TensorBoardLogger:
    def __init__(self, folder: Path) -> None:
        self.writer = require_tensorboard()(log_dir=str(folder / "tensorboard"))

    def log_epoch(self, record: dict[str, Any]) -> None:
        epoch = record["epoch"]
        self.writer.add_scalar("lr", record["lr"], epoch)
        for term, value in record["train"].items():
            self.writer.add_scalar(f"train/{term}", value, epoch)
        for head, errors in record["test"].items():
            for k, value in errors.items():
                self.writer.add_scalar(f"test_error_{k}/{head}", value, epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
