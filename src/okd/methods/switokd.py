"""SwitOKD, switchable online KD (Qian et al., ECCV 2022), as docs/methods/switokd.md describes it.

A teacher (peer 0) and a student (peer 1), given as ``--arch TEACHER,STUDENT`` (or one backbone
for both), train on the same batch. Each step a switch compares their distillation gap with a
threshold: in "learning mode" both learn from labels and from each other; in "expert mode" the
teacher pauses (no update at all) while the student keeps learning from it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from okd.data.batch import Batch
from okd.errors import OKDUserError
from okd.losses.switokd import THRESHOLD_RANGE, expert_mode, switch_sums, switokd_kl
from okd.methods.base import OKDMethod
from okd.methods.options import Option, temperature
from okd.methods.registry import register_method
from okd.models import CohortOutput

def parse_threshold(value: str | float) -> float | None:
    """'adaptive' -> None; a number in [0, 2] -> itself; anything else is a user error."""
    if isinstance(value, str) and value.strip().lower() == "adaptive":
        return None
    low, high = THRESHOLD_RANGE
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not low <= number <= high:
        raise OKDUserError(f"--switch-threshold must be 'adaptive' or a number in [{low:g}, {high:g}] "
                           f"(an L1 distance between two distributions), got {value!r}")
    return number


@register_method
class SwitOKD(OKDMethod):
    """L_s = CE(z_s) + KL(p_t || p_s) with p_t detached, every step; L_t = CE(z_t) + KL(p_s || p_t) with
    p_s detached, only in learning mode (p = softmax(z / tau); the code's KL has no tau^2).

    The switch is computed from the detached logits of the whole (global, under DDP) batch, so every
    rank decides alike. In expert mode the teacher's terms are multiplied by 0 (its gradient stays
    defined for DDP) and ``held_parameters`` makes the engine skip its update entirely.
    """

    name = "switokd"
    default_share = "none"
    allowed_shares = ("none",)
    min_peers = 2
    supports_heterogeneous = True

    options = (
        temperature(1.0, "temperature of the mutual KL terms and of the gap (the code uses 1)"),
        Option("switch_threshold", str, "adaptive", "adaptive (the paper's delta) or a fixed gap threshold in [0, 2]",
               check=lambda value: parse_threshold(value) and None),
        Option("student_lr_scale", float, 1.0, "the student's learning rate as a multiple of --lr (CIFAR-100 recipe: "
               "0.1, as its code)", minimum=0.0, exclusive_minimum=True, why="SwitOKD's CIFAR-100 code uses 0.1"),
    )

    def __init__(self, backbone: str | Sequence[str], num_classes: int, num_peers: int, share: str | None = None,
                 **options: Any) -> None:
        if num_peers != 2:
            raise OKDUserError(f"method 'switokd' trains one teacher and one student, got --num-peers {num_peers}: "
                               "give --arch TEACHER,STUDENT (or one backbone and --num-peers 2)")
        super().__init__(backbone, num_classes, num_peers, share, **options)
        self.threshold = parse_threshold(self.opt.switch_threshold)
        self.student_lr_scale = self.opt.student_lr_scale
        self.kd_t = self.opt.kd_t
        self.expert = False  # the mode of the step being taken
        # steps taken and steps in expert mode: checkpointed, for the docs' "how often the teacher paused"
        self.register_buffer("mode_steps", torch.zeros(2, dtype=torch.long))

    @classmethod
    def recipe(cls, dataset: str, backbones: list[str]) -> dict[str, Any]:
        """A teacher and a student (also when one backbone is given for both); on CIFAR-100 the code's
        student learning rate, 0.01 beside the teacher's 0.1."""
        peers = len(backbones) if len(backbones) > 1 else 2  # a wrong count is refused with SwitOKD's own message
        return {"num_peers": peers, **({"student_lr_scale": 0.1} if dataset == "cifar100" else {})}

    def parameter_groups(self) -> list[dict[str, Any]]:
        teacher = [*self.cohort.trunk.parameters(), *self.cohort.branches[0].parameters()]
        return [{"params": teacher}, {"params": list(self.cohort.branches[1].parameters()), "lr_scale": self.student_lr_scale}]

    @property
    def deployed_peer(self) -> int:
        return 1  # the student is what SwitOKD trains for

    def _switch(self, teacher: torch.Tensor, student: torch.Tensor, targets: torch.Tensor) -> bool:
        sums = switch_sums(teacher, student, targets, self.kd_t)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        return expert_mode(sums, self.threshold)

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        teacher, student = output.logits
        self.expert = self._switch(teacher, student, batch.targets)
        on = 0.0 if self.expert else 1.0
        return {
            "ce_student": F.cross_entropy(student, batch.targets),
            "kd_student": switokd_kl(teacher.detach(), student, self.kd_t),
            "ce_teacher": on * F.cross_entropy(teacher, batch.targets),
            "kd_teacher": on * switokd_kl(student.detach(), teacher, self.kd_t),
        }

    def held_parameters(self) -> Iterator[nn.Parameter]:
        if not self.expert:
            return iter(())
        return iter(self.parameter_groups()[0]["params"])

    @torch.no_grad()
    def after_step(self, output: CohortOutput, batch: Batch) -> None:
        self.mode_steps[0] += 1
        self.mode_steps[1] += int(self.expert)
