"""CL-ILR: collaborative learning with intermediate-level representation sharing (Song & Chai,
NeurIPS 2018), as the reference runs it (docs/reference-spec.md §4.4).

The peers form a binary tree (``share="tree"``): a trunk shared by all, sub-trunks shared by pairs,
then one branch per peer. The Cohort inserts the gradient-averaging op (ILR's backprop rescaling)
at each fork, so a shared tensor receives the mean, not the sum, of its children's gradients. This
works for any N >= 2 on every backbone: with odd N the last sub-trunk has a single child and no
rescaling.

Ensemble: the mean of **all N** peers' logits. The reference's "Ens" averages peers 0..N-2 only,
because its evaluation loop reuses a loop variable from the loss (docs/reference-spec.md §4.4, §5.1), so
its CL-ILR (Ens) numbers are (N-1)-peer ensembles; we deliberately do not reproduce that bug.
"""

from __future__ import annotations

import torch

from okd.data.batch import Batch
from okd.losses.distill import kl_to_targets, mean_of_others, sum_cross_entropy
from okd.methods.base import OKDMethod
from okd.methods.options import temperature
from okd.methods.registry import register_method
from okd.models import CohortOutput


@register_method
class CLILR(OKDMethod):
    """L = sum_i 0.5 CE(z_i, y) + sum_i 0.5 KL_T(z_i || stopgrad(mean_{j != i} z_j)), T = 2.

    The soft target averages the other peers' *logits*, then applies the softmax (not an average of
    probabilities); beta = 0.5 weights both terms, as in the CL paper.
    """

    name = "cl_ilr"
    default_share = "tree"
    allowed_shares = ("tree",)
    BETA = 0.5  # fixed by the CL paper, not an option
    options = (temperature(2.0),)

    @property
    def kd_t(self) -> float:
        return self.opt.kd_t

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        targets = mean_of_others([z.detach() for z in output.logits])
        kd = kl_to_targets(output.logits, targets, self.kd_t)
        ce = sum_cross_entropy(output.logits, batch.targets)
        return {"ce": (1.0 - self.BETA) * ce, "kd": self.BETA * kd}
