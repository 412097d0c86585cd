"""KDCL, Online Knowledge Distillation via Collaborative Learning (Guo et al., CVPR 2020).

Independent peers, each trained on its own random augmentation of the batch (the paper's
"invariant collaborative learning"), distil from one soft target built from all peers' logits
and the label. The target is detached: it teaches, it is not trained. docs/methods/kdcl.md gives
the rules, the defaults and what could not be checked against the paper.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from okd.data.batch import Batch
from okd.errors import OKDUserError
from okd.losses.distill import kl_to_targets, sum_cross_entropy
from okd.losses.ensemble_targets import ENSEMBLE_RULES
from okd.methods.base import OKDMethod
from okd.methods.options import Option, temperature
from okd.methods.registry import register_method
from okd.models import CohortOutput


def _check_rule(rule: str) -> None:
    if rule == "general":  # the paper's fourth rule: weights fitted on held-out data once per epoch
        raise OKDUserError("--kdcl-rule general is not implemented (it needs a held-out split of the training set, "
                           f"see docs/methods/kdcl.md); choose one of {', '.join(ENSEMBLE_RULES)}")
    if rule not in ENSEMBLE_RULES:
        raise OKDUserError(f"unknown --kdcl-rule {rule!r}; choose one of {', '.join(ENSEMBLE_RULES)}")


@register_method
class KDCL(OKDMethod):
    """L = (1-α) Σ_i CE(z_i, y) + α Σ_i KL_T(z_i || sg(rule(z_1..z_N, y))); peer i sees view i.

    Defaults α = 0.5, T = 4 (the public re-implementation; the paper's CE weight is unknown) and
    the MinLogit rule. At test time the ensemble is the mean of the logits (the label-based rules
    need the label). Shares: "none" is the paper's setting (independent networks); "early" and
    "late" also give each peer its own view (the shared stages run once per view), "tree" cannot.
    """

    name = "kdcl"
    default_share = "none"
    allowed_shares = ("none", "early", "late")
    supports_heterogeneous: ClassVar[bool] = True
    options = (
        temperature(4.0),
        Option("alpha", float, 0.5, "distillation weight; the cross-entropy weighs 1 - alpha", minimum=0.0, maximum=1.0,
               aliases=("-a",)),
        Option("kdcl_rule", str, "minlogit", "soft target built from the peers", choices=tuple(ENSEMBLE_RULES),
               check=_check_rule),
    )

    def __init__(self, backbone: str, num_classes: int, num_peers: int, share: str | None = None, **options: Any) -> None:
        super().__init__(backbone, num_classes, num_peers, share, **options)
        self.kd_t, self.alpha, self.rule = self.opt.kd_t, self.opt.alpha, self.opt.kdcl_rule

    @property
    def train_views(self) -> int:
        return self.num_peers

    def soft_target(self, output: CohortOutput, targets: torch.Tensor) -> torch.Tensor:
        """The detached teacher logits [B, C] of the chosen rule."""
        with torch.no_grad():
            return ENSEMBLE_RULES[self.rule](torch.stack(output.logits), targets)

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        target = self.soft_target(output, batch.targets)
        return {
            "ce": (1 - self.alpha) * sum_cross_entropy(output.logits, batch.targets),
            "kd": self.alpha * kl_to_targets(output.logits, [target] * self.num_peers, self.kd_t),
        }
