"""ONE, On-the-fly Native Ensemble (Lan et al., NeurIPS 2018), as the reference runs it
(docs/reference-spec.md §4.5).

The peers share everything but the last stage (``share="late"``). A gate reads the pooled trunk
output and weights the peers per sample; the gated logit z_e is the online teacher and the
ensemble. The gate runs in ``forward`` so DDP sees its parameters in the graph.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from okd.data.batch import Batch
from okd.losses.distill import kl_to_targets, sum_cross_entropy
from okd.methods.base import OKDMethod
from okd.methods.options import temperature
from okd.methods.registry import register_method
from okd.models import Cohort, CohortOutput


def _pool(x: torch.Tensor) -> torch.Tensor:
    """GAP + flatten of a feature map (a no-op on an already flat ``[B, C]`` tensor)."""
    return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1) if x.dim() == 4 else x


@torch.no_grad()
def _trunk_channels(cohort: Cohort) -> int:
    """Channels of the shared trunk output, probed with a dummy forward in eval mode.

    Probing instead of a per-backbone table keeps the gate generic (32/128/512/60/126 channels on
    ResNet-32/110, VGG-16, DenseNet, HCGNet), and unlike a lazy layer the gate's parameters exist
    at build time, so parameter counts and optimiser groups are exact. Eval mode leaves the BN
    running statistics untouched.
    """
    was_training = cohort.training
    cohort.eval()
    try:
        size = cohort.spec.input_size
        device = next(cohort.parameters()).device
        h = cohort.forward_trunk(torch.zeros(2, 3, size, size, device=device))
    finally:
        cohort.train(was_training)
    return _pool(h).shape[1]


@register_method
class ONE(OKDMethod):
    """L = sum_i CE(z_i, y) + CE(z_e, y) + sum_i KL_T(z_i || stopgrad(z_e)), T = 3; Ens = z_e.

    z_e = sum_i g_i z_i with g = softmax(ReLU(BN1d(Linear(GAP(trunk))))). The teacher CE trains
    the gate and every branch; the KD targets are detached, so peers do not pull the teacher
    towards themselves. No ramp-up, as in the reference. The gate's BatchNorm1d needs a training
    batch of more than one sample.
    """

    name = "one"
    default_share = "late"
    allowed_shares = ("late",)
    options = (temperature(3.0),)

    def __init__(self, backbone: str, num_classes: int, num_peers: int, share: str | None = None, **options: Any) -> None:
        super().__init__(backbone, num_classes, num_peers, share, **options)
        self.kd_t = self.opt.kd_t
        self.gate = nn.Sequential(
            nn.Linear(_trunk_channels(self.cohort), num_peers),
            nn.BatchNorm1d(num_peers),
            nn.ReLU(inplace=True),
            nn.Softmax(dim=1),
        )

    def forward(self, images: torch.Tensor) -> CohortOutput:
        output = self.cohort(images)
        weights = self.gate(_pool(output.trunk))  # [B, N]
        logits = torch.stack(output.logits, dim=1)  # [B, N, C]
        output.extras["gate"] = weights
        output.extras["teacher"] = (weights.unsqueeze(-1) * logits).sum(1)
        return output

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        teacher = output.extras["teacher"]
        target = teacher.detach()
        return {
            "ce": sum_cross_entropy(output.logits, batch.targets),
            "teacher_ce": F.cross_entropy(teacher, batch.targets),
            "kd": kl_to_targets(output.logits, [target] * len(output.logits), self.kd_t),
        }

    def ensemble_logits(self, output: CohortOutput) -> torch.Tensor:
        return output.extras["teacher"]
