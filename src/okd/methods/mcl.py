"""MCL, Mutual Contrastive Learning (Yang, An, Cai, Xu; AAAI 2022), as its official CIFAR code runs it.

Each peer gets an embedding head on its pooled feature; the peers' L2-normalised embeddings are
contrasted within the batch, inside each network (VCL) and across networks (ICL), both as
supervised-contrastive losses and as "soft" KL terms between similarity distributions
(``okd.losses.mcl``). No memory bank: batches come from the m-per-class sampler (2 samples of each
of B/2 classes), so every anchor has a same-class partner. Details and quirks: docs/methods/mcl.md.

    L = sum_i CE(z_i, y) + a*VCL + b*ICL + g*SoftVCL + l*SoftICL [+ KD]
    a = b = 0.1, g = l = 1, tau = 0.1, T = 3 (scripts/train_cifar_mcl.sh)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from okd.data.batch import Batch
from okd.losses.contrastive import embed
from okd.losses.distill import kl_div_t, sum_cross_entropy
from okd.losses.mcl import mcl_terms
from okd.methods.base import OKDMethod
from okd.methods.options import Option, temperature, temperature_floor
from okd.methods.registry import register_method
from okd.models import CohortOutput, parse_arch


def projection_head(dim_in: int, dim_out: int) -> nn.Sequential:
    """The code's ``Embed`` without its L2 normalisation: Linear(d, 128) -> ReLU -> Linear(128, 128)."""
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.ReLU(inplace=True), nn.Linear(dim_out, dim_out))


def _weight(name: str, default: float, what: str) -> Option:
    return Option(name, float, default, f"weight of {what}", minimum=0.0)


@register_method
class MCL(OKDMethod):
    """Cohort + one projection head per peer; loss terms {ce, vcl, icl, soft_vcl, soft_icl[, kd]}.

    Cohort: the official code builds two *independent* networks for 2 peers and shares conv1 +
    layer1 (okd's ``early`` branch point) for 4, so the default share is ``none`` for 2 peers and
    ``early`` otherwise. Deployed peer: 0 (the code reports the best peer at its best epoch; okd
    reports every peer); with ``logit_distill`` and more than 2 peers only the last peer learns
    from the ensemble, so that one is deployed. Ensemble: mean logits (the code sums them: same
    argmax).
    """

    name = "mcl"
    default_share = "early"  # for 4 peers; 2 peers default to "none" (see __init__)
    allowed_shares = ("none", "early", "late")
    train_sampler = "m_per_class"
    supports_heterogeneous = True
    options = (
        temperature(3.0, "temperature of the soft terms and of the logit distillation"),
        Option("feat_dim", int, 128, "embedding size", minimum=1),
        Option("mcl_tau", float, 0.1, "temperature of the embedding similarities", minimum=0.0, exclusive_minimum=True,
               check=temperature_floor("mcl_tau")),
        _weight("mcl_vcl", 0.1, "the intra-network contrastive loss (the code's alpha)"),
        _weight("mcl_icl", 0.1, "the inter-network contrastive loss (beta)"),
        _weight("mcl_soft_vcl", 1.0, "the soft intra-network term (gamma)"),
        _weight("mcl_soft_icl", 1.0, "the soft inter-network term (lam)"),
        Option("mcl_logit_distill", bool, False, "also distil from the detached mean logits (2 peers: both; more: the last only)"),
        Option("mcl_icl_same_instance", bool, False, "the inter-network loss counts the same image as a positive (the "
               "ImageNet code's choice; off as the CIFAR code)"),
    )

    def __init__(self, backbone: str | Sequence[str], num_classes: int, num_peers: int, share: str | None = None,
                 **options: Any) -> None:
        if share is None:
            share = "none" if num_peers == 2 or len(set(parse_arch(backbone))) > 1 else "early"
        super().__init__(backbone, num_classes, num_peers, share, **options)
        opt = self.opt
        self.kd_t, self.tau, self.feat_dim = float(opt.kd_t), float(opt.mcl_tau), int(opt.feat_dim)
        self.weights = {"vcl": float(opt.mcl_vcl), "icl": float(opt.mcl_icl), "soft_vcl": float(opt.mcl_soft_vcl),
                        "soft_icl": float(opt.mcl_soft_icl)}
        self.logit_distill, self.same_instance = bool(opt.mcl_logit_distill), bool(opt.mcl_icl_same_instance)
        dims = getattr(self.cohort, "feature_dims", None) or [self.cohort.feature_dim] * num_peers
        self.embed = nn.ModuleList(projection_head(d, self.feat_dim) for d in dims)

    @property
    def deployed_peer(self) -> int:
        return self.num_peers - 1 if self.logit_distill and self.num_peers > 2 else 0

    def forward(self, images: torch.Tensor) -> CohortOutput:
        """Cohort + projection heads (inside forward, so DDP sees them); embeddings [N, B, D] in extras."""
        output = self.cohort(images)
        output.extras["embeddings"] = embed(self.embed, output.features)
        return output

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        logits, targets = output.logits, batch.targets
        terms = {"ce": sum_cross_entropy(logits, targets)}
        if self.logit_distill:
            teacher = torch.stack([z.float() for z in logits]).mean(0).detach()
            # the code's quirk: with 2 networks both learn from the mean, with more only the last
            students = logits if self.num_peers == 2 else logits[-1:]
            terms["kd"] = torch.stack([kl_div_t(z, teacher, self.kd_t) for z in students]).sum()
        contrast = mcl_terms(list(output.extras["embeddings"]), targets, self.tau, self.kd_t, self.same_instance)
        for name, value in contrast.items():
            terms[name] = self.weights[name] * value
        return terms
