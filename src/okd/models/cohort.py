"""Generic cohort: a shared trunk plus N per-peer branches cut from any backbone's stage list.

Share modes (docs/reference-spec.md §4.1):
- ``none``:  N independent networks (the DML paper's setting; also the single-network baseline),
- ``early``: stages before ``spec.early`` shared (DML, MCL-OKD),
- ``late``:  stages before ``spec.late`` shared (ONE, OKDDip),
- ``tree``:  CL-ILR's binary tree: trunk -> ceil(N/2) sub-trunks (``early`` .. ``late``) -> N
  branches, with the gradient-averaging op at every fork that has more than one child.

Every peer is built from a fresh backbone, so peers start from independent initialisations as
in the reference; a peer's stages keep the backbone's names, so ``peer_state_dict(i)`` loads with
``strict=True`` into ``create_backbone(name)`` (for a timm/torchvision backbone: into the library's own
model, through the backbone's ``key_map``). With one factory per peer the peers may be different
backbones (DML's ResNet-32 + ResNet-110); they then share nothing (``none``), and ``peer_state_dict(i)``
loads into peer i's own backbone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from okd.errors import OKDUserError
from okd.models.base import Backbone, map_state_keys

SHARE_MODES = ("none", "early", "late", "tree")

BackboneFactory = Callable[[], Backbone]


class _AverageGradient(torch.autograd.Function):
    """Identity forward; backward divides the gradient by the number of children (ILR, CL-ILR)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, num_children: int) -> torch.Tensor:  # type: ignore[override]
        ctx.num_children = num_children
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad / ctx.num_children, None


def average_gradient(x: torch.Tensor, num_children: int) -> torch.Tensor:
    """Make a tensor feeding ``num_children`` consumers receive the mean, not the sum, of their gradients."""
    if num_children <= 1:
        return x
    return _AverageGradient.apply(x, num_children)


@dataclass
class CohortOutput:
    """Everything one forward pass of a cohort gives a method's loss."""

    logits: list[torch.Tensor]  # one [B, C] tensor per peer
    features: list[torch.Tensor]  # pooled penultimate feature per peer, [B, d]
    trunk: torch.Tensor  # output of the stages all peers share (the input images if none)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # method heads' outputs


def _stages(backbone: Backbone, start: int, stop: int) -> nn.ModuleDict:
    return nn.ModuleDict({name: backbone.stage(name) for name in backbone.stage_names[start:stop]})


def _peer_factories(make_backbone: BackboneFactory | Sequence[BackboneFactory], num_peers: int | None) -> list[BackboneFactory]:
    if callable(make_backbone):
        if num_peers is None:
            raise ValueError("num_peers is required with a single backbone factory")
        factories = [make_backbone] * num_peers
    else:
        factories = list(make_backbone)
        if num_peers is not None and num_peers != len(factories):
            raise ValueError(f"num_peers={num_peers} but {len(factories)} backbone factories were given")
    if not factories:
        raise ValueError(f"num_peers must be >= 1, got {num_peers if num_peers is not None else 0}")
    return factories


def _layout(backbone: Backbone) -> tuple:
    """What two peers must agree on to share layers: their stages and every tensor's name and shape."""
    shapes = tuple((key, tuple(value.shape)) for key, value in backbone.state_dict().items())
    return type(backbone), backbone.stage_names, shapes


def _check_common(peers: list[Backbone]) -> None:
    """Peers see the same images and are scored on the same labels, so these must agree."""
    sizes = [peer.spec.input_size for peer in peers]
    if len(set(sizes)) > 1:
        raise OKDUserError(
            f"the peers' backbones are made for different input sizes (by peer: {', '.join(f'{s}px' for s in sizes)}); "
            "a cohort trains on one image size: choose backbones of the same input size"
        )
    classes = [peer.num_classes for peer in peers]
    if len(set(classes)) > 1:
        raise OKDUserError(
            f"the peers' classifiers have different class counts (by peer: {', '.join(map(str, classes))}); "
            "give one class count for every peer (e.g. --num-classes)"
        )


def _run(stages: nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    for stage in stages.values():
        x = stage(x)
    return x


class Cohort(nn.Module):
    """Trunk + (optional sub-trunks) + N branches of one backbone, or N independent backbones."""

    def __init__(
        self,
        make_backbone: BackboneFactory | Sequence[BackboneFactory],
        num_peers: int | None = None,
        share: str = "early",
    ) -> None:
        """``make_backbone``: one factory called once per peer, or one factory per peer (then a
        heterogeneous cohort, e.g. ResNet-32 + ResNet-110, is possible with ``share="none"`` only:
        a shared trunk is one network's layers)."""
        super().__init__()
        if share not in SHARE_MODES:
            raise ValueError(f"share must be one of {SHARE_MODES}, got {share!r}")
        factories = _peer_factories(make_backbone, num_peers)
        peers = [make() for make in factories]
        first = peers[0]
        self.heterogeneous = any(_layout(peer) != _layout(first) for peer in peers[1:])
        if self.heterogeneous and share != "none":
            raise ValueError(f"peers of different backbones share no layers: share must be 'none', got {share!r}")
        _check_common(peers)
        names = first.stage_names
        self.stage_names = names  # peer 0's (all peers' unless heterogeneous)
        self.num_peers = len(peers)
        self.share = share
        self.feature_dims = [peer.feature_dim for peer in peers]
        self.num_classes = first.num_classes
        self.spec = first.spec  # peer 0's; input_size is common to all peers
        self.key_maps = [peer.key_map for peer in peers]
        fork = {
            "none": 0,
            "early": names.index(first.spec.early),
            "late": names.index(first.spec.late),
            "tree": names.index(first.spec.early),
        }[share]
        branch_start = names.index(first.spec.late) if share == "tree" else fork
        self.trunk = _stages(first, 0, fork)
        self.num_groups = math.ceil(self.num_peers / 2) if share == "tree" else 0
        self.subtrunks = nn.ModuleList(
            [_stages(peers[2 * g], fork, branch_start) for g in range(self.num_groups)]
        )
        self.branches = nn.ModuleList([_stages(p, branch_start, len(p.stage_names)) for p in peers])

    @property
    def feature_dim(self) -> int:
        """The pooled-feature size every peer shares; a heterogeneous cohort must ask per peer."""
        if self.heterogeneous:
            raise ValueError(
                f"this cohort's peers are different backbones (feature sizes {self.feature_dims}): "
                "use cohort.feature_dims[peer] instead of cohort.feature_dim"
            )
        return self.feature_dims[0]

    def group_of(self, peer: int) -> int:
        """Index of the CL-ILR sub-trunk feeding ``peer`` (peers 2g and 2g+1 share sub-trunk g)."""
        return peer // 2

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.trunk, x)

    def forward_branch(self, peer: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled feature and logits of one peer from an input ``h`` to its branch."""
        branch = self.branches[peer]
        stages = list(branch.values())
        for stage in stages[:-1]:
            h = stage(h)
        return h, stages[-1](h)

    def forward(self, x: torch.Tensor) -> CohortOutput:
        """``x`` [B, C, H, W]: every peer sees it; [N, B, C, H, W]: peer i sees view ``x[i]``."""
        if x.dim() == 5:
            return self._forward_views(x)
        trunk = self.forward_trunk(x)
        if self.share == "tree":
            inputs = self._tree_inputs(trunk)
        else:
            inputs = [trunk] * self.num_peers
        features, logits = [], []
        for peer, h in enumerate(inputs):
            feature, logit = self.forward_branch(peer, h)
            features.append(feature)
            logits.append(logit)
        return CohortOutput(logits=logits, features=features, trunk=trunk)

    def _forward_views(self, views: torch.Tensor) -> CohortOutput:
        """The shared trunk runs once per view, as separate calls, so BatchNorm normalises each view by
        its own batch statistics (as PCL's code does); one 3B-batch would mix them."""
        if views.shape[0] != self.num_peers:
            raise ValueError(f"{views.shape[0]} views for {self.num_peers} peers: multi-view input needs one view per peer")
        if self.share == "tree":
            raise ValueError("share='tree' feeds two peers from one sub-trunk, so it cannot give each peer its own view")
        trunks = [self.forward_trunk(view) for view in views]
        features, logits = [], []
        for peer, h in enumerate(trunks):
            feature, logit = self.forward_branch(peer, h)
            features.append(feature)
            logits.append(logit)
        return CohortOutput(logits=logits, features=features, trunk=torch.stack(trunks))

    def _tree_inputs(self, trunk: torch.Tensor) -> list[torch.Tensor]:
        shared = average_gradient(trunk, self.num_groups)
        group_out = [_run(sub, shared) for sub in self.subtrunks]
        inputs = []
        for peer in range(self.num_peers):
            g = self.group_of(peer)
            children = min(2, self.num_peers - 2 * g)
            inputs.append(average_gradient(group_out[g], children))
        return inputs

    def peer_state_dict(self, peer: int) -> dict[str, torch.Tensor]:
        """State dict of trunk + peer's path, named as the plain network's (``strict=True`` loadable).

        The plain network is the okd backbone, or the library's model for timm/torchvision backbones.
        """
        parts = [self.trunk]
        if self.share == "tree":
            parts.append(self.subtrunks[self.group_of(peer)])
        parts.append(self.branches[peer])
        state: dict[str, torch.Tensor] = {}
        for part in parts:
            for key, value in part.state_dict().items():
                state[key] = value
        return map_state_keys(state, self.key_maps[peer])
