"""DML, Deep Mutual Learning (Zhang et al., CVPR 2018), as the reference runs it (docs/reference-spec.md §4.3).

Every peer learns from the labels and from each other peer's detached prediction. The reference
shares stage 1 among the peers (``share="early"``, the default); ``share="none"`` gives the DML
paper's fully independent networks, which may then be different backbones (``--arch resnet32,resnet110``).
"""

from __future__ import annotations

import torch

from okd.data.batch import Batch
from okd.losses.distill import mutual_kl, sum_cross_entropy
from okd.methods.base import OKDMethod
from okd.methods.options import temperature
from okd.methods.registry import register_method
from okd.models import CohortOutput


@register_method
class DML(OKDMethod):
    """L = sum_i CE(z_i, y) + sum_i mean_{j != i} KL_T(z_i || stopgrad(z_j)), T = 2; Ens = mean logits."""

    name = "dml"
    default_share = "early"
    allowed_shares = ("none", "early")
    supports_heterogeneous = True
    options = (temperature(2.0),)

    @property
    def kd_t(self) -> float:
        return self.opt.kd_t

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        return {
            "ce": sum_cross_entropy(output.logits, batch.targets),
            "kd": mutual_kl(output.logits, self.kd_t),
        }
