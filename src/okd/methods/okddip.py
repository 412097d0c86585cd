"""OKDDip, Online Knowledge Distillation with Diverse Peers (Chen et al., AAAI 2020), as the
reference runs it (docs/reference-spec.md §4.6).

The N branches (``share="late"``) are N-1 auxiliary peers (0..N-2) and one group leader (N-1),
which is the network a user deploys. Each peer distils from its own attention-weighted mix of
the peers' logits, which keeps the peers diverse; the leader distils from the peers' mean.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from okd.data.batch import Batch
from okd.losses.distill import attention_targets, kl_div_t, kl_to_targets, rampup_weight, sum_cross_entropy
from okd.methods.base import OKDMethod
from okd.methods.options import Option, temperature
from okd.methods.registry import register_method
from okd.models import CohortOutput


@register_method
class OKDDip(OKDMethod):
    """L = sum_{all N} CE + w(e) [sum_{i<N-1} KL_T(z_i || x_i) + KL_T(z_L || mean_{i<N-1} z_i)], T = 3.

    x_i = sum_j a_ij z_j with a_ij = softmax_j((W_q f_i) . (W_k f_j)) over the peers, self included,
    unscaled; W_q, W_k: d -> d//8 without bias, shared by the peers; f is the pooled penultimate
    feature. **No target is detached** (as the reference): the KD term trains the attention,
    W_q, W_k and the other peers too. w(e) is an 80-epoch sigmoid ramp-up on the 0-based epoch.
    Ens is the *sum* of all N logits (the reference's choice; its argmax equals the mean's).
    """

    name = "okddip"
    default_share = "late"
    allowed_shares = ("late",)
    options = (
        temperature(3.0),
        Option("rampup_epochs", int, 80, "epochs of the sigmoid ramp-up of the distillation weight", minimum=0),
    )

    def __init__(self, backbone: str, num_classes: int, num_peers: int, share: str | None = None, **options: Any) -> None:
        super().__init__(backbone, num_classes, num_peers, share, **options)
        self.kd_t, self.rampup_epochs = self.opt.kd_t, self.opt.rampup_epochs
        dim = self.cohort.feature_dim
        self.query = nn.Linear(dim, dim // 8, bias=False)
        self.key = nn.Linear(dim, dim // 8, bias=False)

    @property
    def deployed_peer(self) -> int:
        """The group leader, the last branch."""
        return self.num_peers - 1

    def forward(self, images: torch.Tensor) -> CohortOutput:
        output = self.cohort(images)
        peers = self.num_peers - 1
        features = torch.stack(output.features[:peers], dim=1)  # [B, P, d]
        logits = torch.stack(output.logits[:peers], dim=1)  # [B, P, C]
        attention, targets = attention_targets(self.query(features), self.key(features), logits)
        output.extras["attention"] = attention
        output.extras["peer_targets"] = targets  # x_i, [B, P, C]
        return output

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        peers = output.logits[:-1]
        leader = output.logits[-1]
        targets = output.extras["peer_targets"].unbind(1)
        peer_kd = kl_to_targets(peers, targets, self.kd_t)
        leader_kd = kl_div_t(leader, torch.stack(peers).mean(0), self.kd_t)
        weight = rampup_weight(epoch, self.rampup_epochs)
        return {
            "ce": sum_cross_entropy(output.logits, batch.targets),
            "kd": weight * (peer_kd + leader_kd),
        }

    def ensemble_logits(self, output: CohortOutput) -> torch.Tensor:
        return torch.stack(output.logits).sum(0)
