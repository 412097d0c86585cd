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

import torch
import torch.distributed as dist
from torch import nn

from okd.data.batch import Batch
from okd.engine.distributed import all_gather_rows, is_distributed
from okd.errors import OKDUserError
from okd.losses.contrastive import (
    batch_normaliser,
    l2_normalise,
    momentum_update_,
    multiview_scores,
    nce_loss,
)
from okd.losses.distill import kl_div_t, sum_cross_entropy
from okd.losses.negatives import ClassIndex, build_class_index, check_num_negatives, contrast_indices
from okd.methods.base import DatasetInfo, OKDMethod
from okd.methods.registry import register_method
from okd.models import CohortOutput


def _check_options(nce_t: float, nce_m: float, feat_dim: int, kd_t: float) -> None:
    if nce_t <= 0:
        raise OKDUserError(f"nce_t={nce_t} must be positive; use --nce-t > 0")
    if not 0.0 <= nce_m <= 1.0:
        raise OKDUserError(f"nce_m={nce_m} must lie in [0, 1]; use --nce-m between 0 and 1")
    if feat_dim < 1:
        raise OKDUserError(f"feat_dim={feat_dim} must be at least 1")
    if kd_t <= 0:
        raise OKDUserError(f"kd_t={kd_t} must be positive; use --kd-t > 0")


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

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        num_peers: int,
        share: str | None = None,
        *,
        dataset: DatasetInfo | None = None,
        alpha: float = 1.0,
        beta: float = 0.025,
        gamma: float = 1.0,
        kd_t: float = 3.0,
        nce_k: int = 16384,
        nce_t: float = 0.1,
        nce_m: float = 0.5,
        feat_dim: int = 128,
        fixed_z: bool = False,
    ) -> None:
        if dataset is None:
            raise OKDUserError(
                "method 'mcl_okd' needs the training set's size and labels (DatasetInfo) for its memory "
                "banks and class-aware negatives; build it with dataset=DatasetInfo(...)"
            )
        _check_options(nce_t, nce_m, feat_dim, kd_t)
        targets = torch.as_tensor(dataset.train_targets).detach().cpu().long().flatten()
        if targets.numel() != dataset.num_train:
            raise OKDUserError(f"DatasetInfo has {targets.numel()} training labels but num_train={dataset.num_train}")
        index = build_class_index(targets, dataset.num_classes)
        check_num_negatives(int(nce_k), index.count)
        super().__init__(backbone, num_classes, num_peers, share)
        self.alpha, self.beta, self.gamma, self.kd_t = float(alpha), float(beta), float(gamma), float(kd_t)
        self.nce_k, self.nce_t, self.nce_m = int(nce_k), float(nce_t), float(nce_m)
        self.feat_dim, self.fixed_z, self.num_data = int(feat_dim), bool(fixed_z), int(dataset.num_train)
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
        output.extras["embeddings"] = torch.stack(
            [l2_normalise(head(torch.flatten(f, 1)).float()) for head, f in zip(self.embed, output.features)]
        )
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
