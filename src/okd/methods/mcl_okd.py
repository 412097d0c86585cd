"""MCL-OKD: multi-view contrastive learning + distillation from an online teacher
(Yang, An, Xu; ICASSP 2021), as the reference runs it (docs/reference-spec.md §4.7).

The peers share the first stage, like DML. Each peer has an embedding head (Linear(d, 128) + L2
normalisation) and a memory bank of every training sample's embedding. Every peer's live
embedding is contrasted against every *other* peer's bank (positive: the same image; negatives:
K images of other classes), which makes the peers agree on instance-level structure. Only the
last peer is additionally distilled from the peers' mean logits (DOT), so it is the one shipped.

    L = gamma * sum_i CE(z_i, y) + alpha * KL_T(z_{N-1} || stopgrad(mean_i z_i)) + beta * L_MCL

alpha = 0 is the paper's "+MCL" ablation, alpha = 1 the full method.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from okd.data.batch import Batch
from okd.common.collectives import all_gather_rows, is_distributed
from okd.errors import OKDUserError
from okd.losses.contrastive import (
    batch_normaliser,
    embed,
    momentum_update_,
    multiview_scores,
    nce_loss,
)
from okd.losses.distill import kl_div_t, sum_cross_entropy
from okd.losses.negatives import ClassIndex, build_class_index, check_num_negatives, contrast_indices
from okd.methods.base import DatasetInfo, OKDMethod
from okd.methods.options import Option, OptionValues, check_values, temperature, temperature_floor
from okd.methods.registry import register_method
from okd.models import CohortOutput


# The original README's --nce_k per backbone on CIFAR (and ImageNet's ResNet-34); 256 elsewhere.
NCE_K_BY_BACKBONE = {"resnet32": 256, "resnet110": 256, "densenet40_12": 256, "vgg16": 16384, "hcgnet_a1": 16384, "resnet34": 16384}
# reference-spec §2.4: MCL-OKD's own batch and learning rate (the other methods use 128/256 and 0.1)
OPTIMISATION = {"imagenet": {"epochs": 100, "batch_size": 128, "lr": 0.05, "wd": 1e-4},
                "cifar": {"epochs": 300, "batch_size": 64, "lr": 0.05, "wd": 5e-4}}


def _init_banks(num_views: int, num_data: int, dim: int) -> torch.Tensor:
    """i.i.d. uniform in [-stdv, stdv], stdv = 1/sqrt(dim/3): rows of norm ~1, not normalised (as the reference)."""
    stdv = 1.0 / math.sqrt(dim / 3)
    return torch.rand(num_views, num_data, dim).mul_(2 * stdv).sub_(stdv)


@register_method
class MCLOKD(OKDMethod):
    """Cohort + N embedding heads + N memory banks; deployed peer N-1 (the only one DOT distils).

    State: ``memory`` [N, num_train, feat_dim] (persistent buffer: checkpointed, moved with
    ``.to``, restored on resume), ``nce_z`` [N, N-1] when ``fixed_z`` (the normaliser of every
    directed output i -> other_views(N, i)[c], fixed at the first step; -1 until then), and the
    class-sorted training index used by the negative sampler (non-persistent: rebuilt from the
    dataset's labels).
    """

    name = "mcl_okd"
    default_share = "early"
    allowed_shares = ("early", "late", "none")
    options = (
        Option("alpha", float, 1.0, "weight of the distillation from the online teacher (DOT); 0 is the paper's "
               "'+MCL' ablation", minimum=0.0, aliases=("-a",)),
        Option("beta", float, 0.025, "weight of the multi-view contrastive loss", minimum=0.0, aliases=("-b",)),
        Option("gamma", float, 1.0, "weight of the cross-entropy", minimum=0.0),
        temperature(3.0, "temperature of the DOT"),
        Option("nce_k", int, 16384, "negatives per sample (recipe: 256 for the CIFAR ResNets and DenseNet)", minimum=1),
        Option("nce_t", float, 0.1, "temperature of the contrastive scores (recipe: 0.07 on ImageNet)", minimum=0.0,
               exclusive_minimum=True, check=temperature_floor("nce_t")),
        Option("nce_m", float, 0.5, "momentum of the memory banks", minimum=0.0, maximum=1.0, exclusive_maximum=True),
        Option("feat_dim", int, 128, "embedding size", minimum=1),
        Option("fixed_z", bool, False, "fix the NCE normaliser at the first step (CRD) instead of per batch"),
    )

    @classmethod
    def recipe(cls, dataset: str, backbones: list[str]) -> dict[str, Any]:
        """The reference's nce_k per backbone and nce_t per dataset, and its own batch size and lr."""
        values: dict[str, Any] = {"nce_k": NCE_K_BY_BACKBONE.get(backbones[0], 256) if dataset in ("cifar100", "cifar10", "imagenet") else 256,
                                  "nce_t": 0.07 if dataset == "imagenet" else 0.1}
        if dataset == "imagenet":
            values.update(OPTIMISATION["imagenet"])
        elif dataset in ("cifar100", "cifar10", "folder"):
            values.update(OPTIMISATION["cifar"])
        return values

    @classmethod
    def run_label(cls, config: dict[str, Any]) -> str:
        """alpha 0 (no DOT loss) is the paper's "+MCL" ablation: compared as a method of its own."""
        alpha = config.get("alpha")
        return f"{cls.name} (alpha 0)" if alpha is not None and float(alpha) == 0 else cls.name

    @classmethod
    def stand_in_per_class(cls, num_classes: int, options: OptionValues) -> int:
        """Enough samples of the other classes for ``nce_k`` negatives without replacement."""
        return math.ceil(options.nce_k / max(num_classes - 1, 1)) + 1

    def __init__(self, backbone: str, num_classes: int, num_peers: int, share: str | None = None,
                 dataset: DatasetInfo | None = None, **options: Any) -> None:
        if dataset is None:
            raise OKDUserError(
                "method 'mcl_okd' needs the training set's size and labels (DatasetInfo) for its memory "
                "banks and class-aware negatives; build it with dataset=DatasetInfo(...)"
            )
        opt = check_values(self.name, self.options, options, fill=True)  # before the banks are sized from it
        targets = torch.as_tensor(dataset.train_targets).detach().cpu().long().flatten()
        if targets.numel() != dataset.num_train:
            raise OKDUserError(f"DatasetInfo has {targets.numel()} training labels but num_train={dataset.num_train}")
        index = build_class_index(targets, dataset.num_classes)
        check_num_negatives(int(opt.nce_k), index.count, "nce_k")
        super().__init__(backbone, num_classes, num_peers, share, **options)
        self.alpha, self.beta, self.gamma, self.kd_t = float(opt.alpha), float(opt.beta), float(opt.gamma), float(opt.kd_t)
        self.nce_k, self.nce_t, self.nce_m = int(opt.nce_k), float(opt.nce_t), float(opt.nce_m)
        self.feat_dim, self.fixed_z, self.num_data = int(opt.feat_dim), bool(opt.fixed_z), int(dataset.num_train)
        self.embed = nn.ModuleList(nn.Linear(self.cohort.feature_dim, self.feat_dim) for _ in range(num_peers))
        self.register_buffer("memory", _init_banks(num_peers, self.num_data, self.feat_dim))
        if self.fixed_z:
            self.register_buffer("nce_z", torch.full((num_peers, num_peers - 1), -1.0))
        self.register_buffer("class_targets", index.targets, persistent=False)
        self.register_buffer("class_order", index.order, persistent=False)
        self.register_buffer("class_start", index.start, persistent=False)
        self.register_buffer("class_count", index.count, persistent=False)
        self._min_candidates = index.min_candidates

    @property
    def deployed_peer(self) -> int:
        return self.num_peers - 1

    def class_index(self) -> ClassIndex:
        """The negative sampler's view of the training set, on the method's device."""
        return ClassIndex(self.class_targets, self.class_order, self.class_start, self.class_count, self._min_candidates)

    def forward(self, images: torch.Tensor) -> CohortOutput:
        """Cohort + embedding heads (inside forward, so DDP sees the heads); embeddings [N, B, D] in extras."""
        output = self.cohort(images)
        output.extras["embeddings"] = embed(self.embed, output.features)
        return output

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        logits = output.logits
        terms = {"ce": self.gamma * sum_cross_entropy(logits, batch.targets)}
        if self.alpha != 0:
            teacher = torch.stack([z.float() for z in logits]).mean(0).detach()
            terms["dot"] = self.alpha * kl_div_t(logits[-1], teacher, self.kd_t)
        else:
            terms["dot"] = terms["ce"].new_zeros(())
        terms["mcl"] = self.beta * self.mcl_loss(output.extras["embeddings"], batch.indices)
        return terms

    def mcl_loss(self, embeddings: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Sum of the N(N-1) directed NCE losses against the banks as they were before this step."""
        contrast_idx = contrast_indices(indices, self.class_index(), self.nce_k)
        scores = multiview_scores(self.memory, embeddings, contrast_idx, self.nce_t)
        z = batch_normaliser(scores, self.num_data)
        if self.fixed_z:
            z = self._fix_normaliser(z)
        return nce_loss(scores / z[..., None, None], self.num_data).sum()

    @torch.no_grad()
    def _fix_normaliser(self, batch_z: torch.Tensor) -> torch.Tensor:
        """CRD's fixed Z: the first step's (averaged over ranks) value, kept in ``nce_z``; no host sync."""
        if is_distributed():
            dist.all_reduce(batch_z)
            batch_z /= dist.get_world_size()
        z = torch.where(self.nce_z > 0, self.nce_z, batch_z.to(self.nce_z.dtype))
        self.nce_z.copy_(z)
        return z

    @torch.no_grad()
    def after_step(self, output: CohortOutput, batch: Batch) -> None:
        """Momentum-update every bank with this step's embeddings (all ranks' rows, so banks stay equal)."""
        embeddings, indices = output.extras["embeddings"].detach(), batch.indices
        if is_distributed():
            embeddings = all_gather_rows(embeddings.transpose(0, 1).contiguous()).transpose(0, 1)
            indices = all_gather_rows(indices)
        momentum_update_(self.memory, indices, embeddings, self.nce_m)
