"""Baseline: one network trained with cross-entropy (a cohort of one, nothing shared)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from okd.data.batch import Batch
from okd.methods.base import OKDMethod
from okd.methods.registry import register_method
from okd.models import CohortOutput


@register_method
class Baseline(OKDMethod):
    name = "baseline"
    default_share = "none"
    allowed_shares = ("none",)
    min_peers = 1

    @classmethod
    def recipe(cls, dataset: str, backbones: list[str]) -> dict[str, Any]:
        """One network (or one per backbone given)."""
        return {"num_peers": len(backbones)}

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return {"ce": sum(F.cross_entropy(z, batch.targets) for z in output.logits)}
