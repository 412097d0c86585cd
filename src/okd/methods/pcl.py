"""PCL, Peer Collaborative Learning (Wu & Gong, AAAI 2021), as docs/methods/pcl.md describes it.

Peers share the stages before the backbone's ``late`` fork; peer i trains on its own augmented
view. A fusion classifier on the concatenated peer features is the "peer ensemble teacher". A
frozen EMA copy of the whole model gives the "peer mean teachers". The EMA peers are what PCL
evaluates and deploys.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from okd.data.batch import Batch
from okd.common.ema import ema_update_
from okd.losses.distill import sum_cross_entropy
from okd.losses.pcl import RAMPUP_MODES, pcl_rampup, peer_ensemble_kl, peer_mean_kl
from okd.methods.base import OKDMethod
from okd.methods.options import Option, temperature
from okd.methods.registry import register_method
from okd.models import CohortOutput


@register_method
class PCL(OKDMethod):
    """L = sum_i CE(z_i) + CE(z_f) + w(e) [sum_i KL_T(z_i || sg z_f) + sum_i mean_{j!=i} KL_T(z_i || sg ema_j)].

    ``fuse`` is Linear(N d, C) on the peers' pooled features (not detached: its CE trains them).
    ``shadow`` holds the EMA of ``cohort`` and ``fuse`` with requires_grad=False: it stays out of
    the optimiser and DDP but lives in the state dict. It runs under no_grad in the same train/eval
    mode as the students, so its BatchNorm statistics come from its own forward passes. Ensemble =
    mean of the EMA peers' logits; deployed = EMA peer 0.
    """

    name = "pcl"
    default_share = "late"
    allowed_shares = ("late", "early", "none")
    min_peers = 2
    options = (
        temperature(3.0),
        Option("rampup_epochs", int, 80, "epochs of the consistency ramp-up", minimum=0),
        Option("pcl_rampup", str, "intended", "intended, or reimpl: the public re-implementation's ramp-up bug (KD off "
               "for epochs 2-80; only to reproduce its numbers)", choices=tuple(RAMPUP_MODES)),
        Option("ema_decay", float, 0.999, "decay bound of the EMA peers (the peer mean teachers)", minimum=0.0, maximum=1.0,
               exclusive_maximum=True),
    )

    @classmethod
    def recipe(cls, dataset: str, backbones: list[str]) -> dict[str, Any]:
        """The paper's cohort of 3 peers (or one per backbone given)."""
        return {"num_peers": len(backbones) if len(backbones) > 1 else 3}

    def __init__(self, backbone: str, num_classes: int, num_peers: int, share: str | None = None, **options: Any) -> None:
        super().__init__(backbone, num_classes, num_peers, share, **options)
        self.kd_t, self.rampup_epochs = self.opt.kd_t, self.opt.rampup_epochs
        self.rampup_mode, self.ema_decay = self.opt.pcl_rampup, self.opt.ema_decay
        self.fuse = nn.Linear(num_peers * self.cohort.feature_dim, num_classes)
        self.shadow = nn.ModuleDict({"cohort": copy.deepcopy(self.cohort), "fuse": copy.deepcopy(self.fuse)})
        self.shadow.requires_grad_(False)
        # Optimiser steps folded into the shadow so far (the EMA's t); checkpointed with the model.
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long))
        self._host_steps: int | None = None  # host copy of ema_steps: no device sync per step
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_host_steps", None))

    @property
    def train_views(self) -> int:
        return self.num_peers

    @property
    def deployed_head(self) -> str:
        return f"ema{self.deployed_peer}"

    def forward(self, images: torch.Tensor) -> CohortOutput:
        output = self.cohort(images)
        output.extras["fused"] = self.fuse(torch.cat(output.features, dim=1))
        with torch.no_grad():
            mean = self.shadow["cohort"](images)
            output.extras["ema"] = torch.stack(mean.logits)  # [N, B, C]
            output.extras["ema_fused"] = self.shadow["fuse"](torch.cat(mean.features, dim=1))
        return output

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        weight = pcl_rampup(epoch, self.rampup_epochs, self.rampup_mode)
        fused = output.extras["fused"]
        return {
            "ce": sum_cross_entropy(output.logits, batch.targets),
            "ce_fuse": F.cross_entropy(fused, batch.targets),
            "pe": weight * peer_ensemble_kl(output.logits, fused, self.kd_t),
            "pm": weight * peer_mean_kl(output.logits, list(output.extras["ema"].unbind(0)), self.kd_t),
        }

    def ensemble_logits(self, output: CohortOutput) -> torch.Tensor:
        return output.extras["ema"].mean(0)

    def eval_heads(self, output: CohortOutput) -> dict[str, torch.Tensor]:
        heads = {f"ema{i}": z for i, z in enumerate(output.extras["ema"].unbind(0))}
        heads["fused"] = output.extras["fused"]
        heads["ema_fused"] = output.extras["ema_fused"]
        return heads

    def peer_state_dict(self, peer: int) -> dict[str, torch.Tensor]:
        """EMA peer ``peer`` (the shadow's trunk + branch): the network PCL ships."""
        return self.shadow["cohort"].peer_state_dict(peer)

    def peer_logits(self, output: CohortOutput, peer: int) -> torch.Tensor:
        return output.extras["ema"][peer]

    def _student_and_shadow_parameters(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        student = [*self.cohort.parameters(), *self.fuse.parameters()]
        shadow = [*self.shadow["cohort"].parameters(), *self.shadow["fuse"].parameters()]
        return student, shadow

    @torch.no_grad()
    def after_step(self, output: CohortOutput, batch: Batch) -> None:
        if self._host_steps is None:  # once after building or loading: one read of the buffer
            self._host_steps = int(self.ema_steps)
        student, shadow = self._student_and_shadow_parameters()
        ema_update_(shadow, student, self._host_steps, self.ema_decay)
        self._host_steps += 1
        self.ema_steps.fill_(self._host_steps)
