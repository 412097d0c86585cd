"""The one batch type every loader yields and every method consumes."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Batch(NamedTuple):
    images: torch.Tensor  # [B, 3, H, W] float, normalised, on the training device; [V, B, 3, H, W] for V views (P1)
    targets: torch.Tensor  # [B] int64 class labels
    indices: torch.Tensor  # [B] int64 positions in the training set (MCL-OKD's memory rows)
