"""L-MCL, layer-wise Mutual Contrastive Learning with meta-learned weights (Yang et al., TPAMI 2023).

As its official CIFAR code (winycg/L-MCL, ``main_layer_mcl_cifar_meta.py``) runs it. Each network
gets auxiliary heads: fresh copies of its later stages started at its branch points (okd's
``early`` and ``late``; for CIFAR ResNets the code's after-layer1 and after-layer2 branches), so a
network has H heads (the auxiliary ones, then its own classifier). Every head has an embedding
head, and every head of one network is contrasted with every head of another with MCL's four
terms, each anchor weighted by sigmoid(cos) of a small weight network's projections. An
aggregator mixes each network's heads per sample; the final classifiers distil from the mixes.
Every ``meta_freq`` steps the weight network learns by a meta step (``okd.methods.meta_sgd``).

    L = sum_{i,k} CE(z_ik) + sum_i CE(agg_i) + sum_{i,j} KL_T(z_i,final || sg agg_j)
        + a*VCL + g*SoftVCL + b*ICL + l*SoftICL         (a = b = 0.1, g = l = 1, tau = 0.1, T = 3)

Details and the code's quirks: docs/methods/lmcl.md.
"""

from __future__ import annotations

from typing import Any

import re
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import nn

from okd.data.batch import Batch
from okd.errors import OKDUserError
from okd.losses.contrastive import l2_normalise
from okd.losses.distill import kl_div_t, sum_cross_entropy
from okd.losses.lmcl import aggregate_logits, lmcl_terms, pair_weights
from okd.methods.base import OKDMethod
from okd.methods.mcl import MCL, projection_head
from okd.methods.meta_sgd import meta_hypergradient
from okd.methods.options import Option, temperature
from okd.methods.registry import register_method
from okd.models import CohortOutput, create_backbone

WEIGHT_NET_DIM = 128  # the code's LossWeightNetwork projects every head's feature to 128-d
# The options L-MCL shares with MCL: the same meaning, default and range, declared once in methods/mcl.py.
MCL_OPTIONS = {o.name: o for o in MCL.options}


def _aux_branch(name: str, num_classes: int, start: str) -> nn.ModuleDict:
    """A fresh copy of a backbone's stages from ``start`` to its classifier: one auxiliary head."""
    backbone = create_backbone(name, num_classes)
    names = backbone.stage_names
    return nn.ModuleDict({s: backbone.stage(s) for s in names[names.index(start):]})


def _run(stages: nn.ModuleDict, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    modules = list(stages.values())
    for stage in modules[:-1]:
        h = stage(h)
    return h, modules[-1](h)


@register_method
class LMCL(OKDMethod):
    """Cohort of independent networks + auxiliary heads, embedding heads, aggregators, weight network.

    Loss terms {ce, kd, vcl, icl, soft_vcl, soft_icl} (weighted as logged by the code). Deployed
    peer: 0's own classifier (the code reports the best of all heads of all networks; okd scores
    every head, the auxiliary ones as ``peer<i>_aux<k>``). The weight network is trained only by
    ``meta_update`` (its own SGD, momentum kept in buffers), never by the engine's optimiser.
    """

    name = "lmcl"
    default_share = "none"
    allowed_shares = ("none",)
    train_sampler = "m_per_class"
    supports_heterogeneous = True
    # MCL's knobs, then the meta step's two (aliases: the official code's flags).
    options = (
        temperature(3.0, "temperature of the soft contrastive terms and the logit distillation"),
        *(MCL_OPTIONS[name] for name in ("feat_dim", "mcl_tau", "mcl_vcl", "mcl_icl", "mcl_soft_vcl", "mcl_soft_icl")),
        Option("lmcl_meta_freq", int, 50, "a meta step every N steps of an epoch (its first included; 0: never)",
               minimum=0, aliases=("--meta-freq",)),
        Option("lmcl_meta_steps", int, 2, "virtual SGD steps on the contrastive loss per meta step (the code's --times)",
               minimum=1, aliases=("--times",)),
    )

    @classmethod
    def recipe(cls, dataset: str, backbones: list[str]) -> dict[str, Any]:
        """The paper's cohort of 2 networks (or one per backbone given)."""
        return {"num_peers": len(backbones) if len(backbones) > 1 else 2}

    def __init__(self, backbone: str | Sequence[str], num_classes: int, num_peers: int, share: str | None = None,
                 **options: Any) -> None:
        super().__init__(backbone, num_classes, num_peers, share or "none", **options)
        opt = self.opt
        self.kd_t, self.tau = float(opt.kd_t), float(opt.mcl_tau)
        self.meta_freq, self.meta_steps = int(opt.lmcl_meta_freq), int(opt.lmcl_meta_steps)
        self.weights = {"vcl": opt.mcl_vcl, "icl": opt.mcl_icl, "soft_vcl": opt.mcl_soft_vcl, "soft_icl": opt.mcl_soft_icl}
        self.branch_points: list[list[str]] = []
        self.aux = nn.ModuleList()
        for name in self.backbone_names:
            spec = create_backbone(name, num_classes).spec
            points = list(dict.fromkeys([spec.early, spec.late]))
            self.branch_points.append(points)
            self.aux.append(nn.ModuleList(_aux_branch(name, num_classes, p) for p in points))
        dims = self.cohort.feature_dims
        heads = [len(p) + 1 for p in self.branch_points]
        self.embed = nn.ModuleList(nn.ModuleList(projection_head(d, int(opt.feat_dim)) for _ in range(h)) for d, h in zip(dims, heads))
        self.aggregator = nn.ModuleList(projection_head_gate(d, h) for d, h in zip(dims, heads))
        self.weight_net = nn.ModuleList(nn.ModuleList(nn.Linear(d, WEIGHT_NET_DIM) for _ in range(h)) for d, h in zip(dims, heads))
        for p in self.weight_net.parameters():
            p.requires_grad_(False)  # trained by meta_update only; DDP and the engine's optimiser skip it
        for k, p in enumerate(self.weight_net.parameters()):
            self.register_buffer(f"weight_net_momentum{k}", torch.zeros_like(p))

    # -- forward ----------------------------------------------------------------------------
    def heads(self, images: torch.Tensor) -> tuple[list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        """(pooled features, logits) of every head of every network: [peer][aux..., own classifier]."""
        features, logits = [], []
        for peer, branch in enumerate(self.cohort.branches):
            inputs, h = {}, images
            stages = list(branch.items())
            for name, stage in stages[:-1]:
                if name in self.branch_points[peer]:
                    inputs[name] = h
                h = stage(h)
            aux = [_run(a, inputs[p]) for a, p in zip(self.aux[peer], self.branch_points[peer])]
            features.append([f for f, _ in aux] + [h])
            logits.append([z for _, z in aux] + [stages[-1][1](h)])
        return features, logits

    def embeddings(self, features: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        return [[l2_normalise(head(f).float()) for head, f in zip(heads, fs)] for heads, fs in zip(self.embed, features)]

    def loss_weights(self, features: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """The weight network's per-anchor weights, one [B] tensor per ``head_pairs`` entry."""
        return pair_weights([[proj(f) for proj, f in zip(projs, fs)] for projs, fs in zip(self.weight_net, features)])

    def forward(self, images: torch.Tensor) -> CohortOutput:
        """Every head, embedding, aggregated logits and (without gradient, as the code) the loss weights."""
        features, logits = self.heads(images)
        aggregated = [aggregate_logits(z, gate(torch.cat(f, dim=1))) for z, f, gate in zip(logits, features, self.aggregator)]
        with torch.no_grad():
            weights = torch.stack(self.loss_weights(features))
        output = CohortOutput(logits=[z[-1] for z in logits], features=[f[-1] for f in features], trunk=images)
        output.extras = {
            "head_logits": torch.stack([torch.stack(z) for z in logits]),  # [N, H, B, C]
            "embeddings": torch.stack([torch.stack(e) for e in self.embeddings(features)]),  # [N, H, B, D]
            "aggregated": torch.stack(aggregated),  # [N, B, C]
            "loss_weights": weights,  # [pairs, B]
        }
        return output

    # -- losses -----------------------------------------------------------------------------
    def contrast(self, embeddings: Sequence[Sequence[torch.Tensor]], targets: torch.Tensor, weights: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """The four contrastive terms, each times its weight (the code's loss_mcl parts)."""
        terms = lmcl_terms(embeddings, targets, weights, self.tau, self.kd_t)
        return {name: self.weights[name] * value for name, value in terms.items()}

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        targets = batch.targets
        head_logits, aggregated = output.extras["head_logits"], output.extras["aggregated"]
        ce = sum_cross_entropy([z for peer in head_logits for z in peer], targets) + sum_cross_entropy(list(aggregated), targets)
        kd = torch.stack([kl_div_t(z, a.detach(), self.kd_t) for z in output.logits for a in aggregated]).sum()
        return {"ce": ce, "kd": kd, **self.contrast(list(output.extras["embeddings"]), targets, list(output.extras["loss_weights"]))}

    def eval_heads(self, output: CohortOutput) -> dict[str, torch.Tensor]:
        """Each network's auxiliary heads (the code's test() scores them too)."""
        head_logits = output.extras["head_logits"]
        return {f"peer{i}_aux{k}": head_logits[i, k] for i in range(self.num_peers) for k in range(head_logits.shape[1] - 1)}

    # -- the meta step ----------------------------------------------------------------------
    def _net_modules(self) -> list[nn.Module]:
        """What the code's MetaSGD updates virtually and rolls back: the networks (with their auxiliary
        heads) and the embedding heads; not the aggregators, not the weight network."""
        return [self.cohort, self.aux, self.embed]

    def meta_update(self, batch: Batch, epoch: int, step: int, optimizer: torch.optim.Optimizer) -> None:
        """Every ``meta_freq``-th step of an epoch (from its first): one meta step of the weight network.

        ``meta_steps`` virtual SGD steps on the weighted contrastive loss (weights with gradient), one
        on the classification loss of every head, then the classification loss at the end is
        differentiated back to the weight network, which takes one Nesterov SGD step with the
        engine's lr, momentum and weight decay. The networks end where they started; their
        BatchNorm statistics keep the one extra update of the last replayed forward (as the code's).
        """
        if self.meta_freq == 0 or step % self.meta_freq != 0:
            return
        group = optimizer.param_groups[0]
        lr, momentum, wd = float(group["lr"]), float(group["momentum"]), float(group["weight_decay"])
        images, targets = batch.images, batch.targets
        modules = self._net_modules()
        params = [p for m in modules for p in m.parameters()]
        buffers = [b for m in modules for b in m.buffers()]
        hyper_src = list(self.weight_net.parameters())
        hyper = [p.detach().clone().requires_grad_(True) for p in hyper_src]

        def inner() -> torch.Tensor:
            features, _ = self.heads(images)
            projected, flat = [], iter(hyper)
            for projs, fs in zip(self.weight_net, features):
                row = []
                for proj, f in zip(projs, fs):
                    weight, bias = next(flat), next(flat)
                    row.append(nn.functional.linear(f, weight, bias))
                projected.append(row)
            terms = self.contrast(self.embeddings(features), targets, pair_weights(projected))
            return sum(terms.values())

        def outer() -> torch.Tensor:
            _, logits = self.heads(images)
            return sum_cross_entropy([z for peer in logits for z in peer], targets)

        def snapshot() -> list[torch.Tensor]:
            return [t.detach().clone() for t in params + buffers]

        @torch.no_grad()
        def restore(state: list[torch.Tensor]) -> None:
            for t, saved in zip(params + buffers, state):
                t.copy_(saved)

        try:
            with torch.enable_grad():
                grads = meta_hypergradient(params, hyper, [inner] * self.meta_steps + [outer], snapshot, restore,
                                           lr=lr, momentum=momentum, weight_decay=wd)
        except RuntimeError as exc:
            op = re.search(r"derivative for (\S+) is not implemented", str(exc))
            if op is None:
                raise
            raise OKDUserError(
                f"L-MCL's meta step differentiates twice, but backbone {self.backbone_name} uses {op.group(1)}, which "
                "PyTorch cannot differentiate twice: use another backbone, or --lmcl-meta-freq 0 (fixed loss weights)"
            ) from None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
            grads = list(torch.split(flat, [g.numel() for g in grads]))
            grads = [g.view_as(h) for g, h in zip(grads, hyper)]
        self._weight_net_sgd(grads, lr, momentum, wd)

    @torch.no_grad()
    def _weight_net_sgd(self, grads: Sequence[torch.Tensor], lr: float, momentum: float, wd: float) -> None:
        """torch.optim.SGD(nesterov=True) on the weight network; its momentum lives in buffers (checkpointed)."""
        for k, (p, g) in enumerate(zip(self.weight_net.parameters(), grads)):
            buf = getattr(self, f"weight_net_momentum{k}")
            d = g.add(p, alpha=wd)
            buf.mul_(momentum).add_(d)
            p.add_(d.add(buf, alpha=momentum), alpha=-lr)


def projection_head_gate(dim: int, heads: int) -> nn.Sequential:
    """The code's ``Aggregator`` head of one network: Linear(H*d, d) -> ReLU -> Linear(d, H) gate logits."""
    return nn.Sequential(nn.Linear(heads * dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, heads))

