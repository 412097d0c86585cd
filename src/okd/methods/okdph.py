"""OKDPH, online KD via parameter hybridisation (Zhang et al., CVPR 2023), as docs/methods/okdph.md describes it.

N students (independent networks, the same initial weights) each train on their own augmented
view; a hybrid-weight model (HWM) of the same backbone is rebuilt before every training forward as
the mean of the students' parameters and buffers, runs on one more view, and every few batches
(or epochs) each student is fused towards it.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from okd.data.batch import Batch
from okd.errors import OKDUserError
from okd.losses.distill import sum_cross_entropy
from okd.losses.okdph import fuse_, hybrid_tensors, okdph_distill
from okd.methods.base import OKDMethod
from okd.methods.options import Option, temperature
from okd.methods.registry import register_method
from okd.models import Cohort, CohortOutput, create_backbone

HYBRID_GRADS = ("code", "paper")

# The official OKDPH.sh commands for CIFAR-100 (omega, beta, gamma, interval) per backbone; other
# backbones and datasets take the code's defaults above.
CIFAR100_RECIPE = {
    "resnet32": (1.0, 0.5, 1.0, "5_batch"),
    "resnet110": (0.8, 0.8, 0.5, "5_batch"),
    "vgg16": (0.3, 0.3, 1.0, "1_epoch"),
    "densenet40_12": (1.0, 0.5, 0.5, "5_batch"),
}


def parse_interval(text: str) -> tuple[int, str]:
    """'5_batch' -> (5, 'batch'); 'off' or '' -> (0, '') (never fuse)."""
    if text in ("", "off", "none"):
        return 0, ""
    count, _, level = text.partition("_")
    if not count.isdigit() or int(count) < 1 or level not in ("batch", "epoch"):
        raise OKDUserError(f"--fusion-interval must look like 5_batch or 1_epoch (or off), got {text!r}")
    return int(count), level


@register_method
class OKDPH(OKDMethod):
    """L = sum_i [omega CE(z_i) + (1 - omega) CE(z_h) + beta KL_T(z_i || sg mean(z_1..z_N, z_h))].

    ``hybrid`` (the HWM) is a one-peer Cohort with requires_grad=False: out of the optimiser and
    DDP, in the state dict, evaluated as the head "hybrid". With ``hybrid_grad="code"`` its CE
    is a logged constant (the official code's behaviour: its gradient lands on the HWM's own
    parameters, which no optimiser steps); with ``"paper"`` the HWM runs on the differentiable
    mean of the students' parameters, so the term trains every student with weight 1/N.
    """

    name = "okdph"
    default_share = "none"
    allowed_shares = ("none",)
    min_peers = 2

    options = (
        temperature(4.0, "temperature of the distillation from the mean of all networks"),
        Option("omega", float, 0.8, "each student's CE weight; the hybrid's CE gets 1 - omega", minimum=0.0, maximum=1.0,
               why="OKDPH's CIFAR-100 ResNet-32 run uses 1.0"),
        Option("beta", float, 0.8, "distillation weight", minimum=0.0, aliases=("-b",)),
        Option("gamma", float, 0.5, "fusion ratio: student <- gamma hybrid + (1 - gamma) student", minimum=0.0,
               maximum=1.0, why="for okdph, the fusion ratio"),
        Option("fusion_interval", str, "1_epoch", "fuse the students towards the hybrid every N batches or epochs: "
               "5_batch, 1_epoch or off", check=lambda text: parse_interval(text) and None),
        Option("hybrid_grad", str, "code", "code: the hybrid's CE trains nothing, as the official code; paper: it "
               "trains the students through the hybrid's parameters", choices=HYBRID_GRADS),
    )

    def __init__(self, backbone: str, num_classes: int, num_peers: int, share: str | None = None, **options: Any) -> None:
        super().__init__(backbone, num_classes, num_peers, share, **options)
        kd_t, omega, beta, gamma = self.opt.kd_t, self.opt.omega, self.opt.beta, self.opt.gamma
        fusion_interval, hybrid_grad = self.opt.fusion_interval, self.opt.hybrid_grad
        self.fuse_every, self.fuse_level = parse_interval(fusion_interval)
        self.kd_t, self.omega, self.beta, self.gamma, self.hybrid_grad = kd_t, omega, beta, gamma, hybrid_grad
        first = self.cohort.branches[0].state_dict()
        for branch in self.cohort.branches[1:]:  # the code's default: every student starts from student 0's weights
            branch.load_state_dict(first)
        self.hybrid = Cohort([partial(create_backbone, self.backbone_names[0], num_classes)], 1, "none")
        self.hybrid.requires_grad_(False)
        self.register_buffer("fuse_step", torch.zeros((), dtype=torch.long))  # batches into the epoch
        self._host_step: int | None = None
        self._fuse_now = False
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_host_step", None))
        self._rebuild_hybrid()

    @classmethod
    def recipe(cls, dataset: str, backbones: list[str]) -> dict[str, Any]:
        """Two students (the paper's CIFAR runs), and the official CIFAR-100 hyper-parameters of the backbone."""
        if dataset != "cifar100" or backbones[0] not in CIFAR100_RECIPE:
            return {"num_peers": 2}
        omega, beta, gamma, interval = CIFAR100_RECIPE[backbones[0]]
        return {"num_peers": 2, "omega": omega, "beta": beta, "gamma": gamma, "fusion_interval": interval}

    @property
    def train_views(self) -> int:
        return self.num_peers + 1  # one view per student and one for the HWM

    def _pairs(self, floating_only: bool = True) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """Per student, its tensors (parameters then floating buffers, state-dict order), and the HWM's same tensors."""
        def tensors(module: torch.nn.Module) -> list[torch.Tensor]:
            return [t for t in module.state_dict(keep_vars=True).values() if t.is_floating_point() or not floating_only]

        return [tensors(branch) for branch in self.cohort.branches], tensors(self.hybrid.branches[0])

    @torch.no_grad()
    def _rebuild_hybrid(self) -> None:
        """theta_h <- mean of the students' parameters and BatchNorm statistics (the code's ``update_hwm``,
        'mean'); integer buffers (BatchNorm's batch counter) are left as they are."""
        students, hybrid = self._pairs()
        weights = [1.0 / self.num_peers] * self.num_peers
        for h, value in zip(hybrid, hybrid_tensors([[t.detach() for t in s] for s in students], weights)):
            h.copy_(value)

    def _paper_hybrid_logits(self, view: torch.Tensor) -> torch.Tensor:
        """The HWM's logits with its parameters as a differentiable function of the students' ones."""
        names = [name for name, _ in self.hybrid.named_parameters()]
        students = [list(branch.parameters()) for branch in self.cohort.branches]
        mixed = hybrid_tensors(students, [1.0 / self.num_peers] * self.num_peers)
        return functional_call(self.hybrid, dict(zip(names, mixed)), (view,)).logits[0]

    def forward(self, images: torch.Tensor) -> CohortOutput:
        views = images.dim() == 5
        if self.training:
            self._rebuild_hybrid()
        output = self.cohort(images[: self.num_peers] if views else images)
        hybrid_view = images[self.num_peers] if views else images
        if self.training and self.hybrid_grad == "paper":
            output.extras["hybrid"] = self._paper_hybrid_logits(hybrid_view)
        else:
            with torch.no_grad():
                output.extras["hybrid"] = self.hybrid(hybrid_view).logits[0]
        return output

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        if self._host_step is None:
            self._host_step = int(self.fuse_step)
        self._fuse_now = self.fuse_level == "batch" and self._host_step % self.fuse_every == 0
        hybrid = output.extras["hybrid"]
        return {
            "ce": self.omega * sum_cross_entropy(output.logits, batch.targets),
            "ce_hybrid": (1.0 - self.omega) * self.num_peers * F.cross_entropy(hybrid, batch.targets),
            "kd": self.beta * okdph_distill(output.logits, hybrid, self.kd_t),
        }

    def eval_heads(self, output: CohortOutput) -> dict[str, torch.Tensor]:
        return {"hybrid": output.extras["hybrid"]}

    def _fuse_students(self) -> None:
        students, hybrid = self._pairs()
        for tensors in students:
            fuse_(tensors, hybrid, self.gamma)

    @torch.no_grad()
    def after_step(self, output: CohortOutput, batch: Batch) -> None:
        """Batch-level fusion towards the HWM of this step (built from the students before the step)."""
        if self._fuse_now:
            self._fuse_students()
        self._host_step = (self._host_step or 0) + 1
        self.fuse_step.fill_(self._host_step)

    @torch.no_grad()
    def start_epoch(self, epoch: int) -> None:
        """Epoch-level fusion after epoch e - 1 was evaluated, when (e - 1) % N == 0, as the code fuses after
        its test; and the batch count the batch-level fusion uses restarts."""
        if self.fuse_level == "epoch" and epoch > 0 and (epoch - 1) % self.fuse_every == 0:
            self._fuse_students()
        self._host_step = 0
        self.fuse_step.zero_()
