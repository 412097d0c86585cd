"""A backbone is an ordered list of named stages; that is all a cohort needs to branch it.

Why stages: the OKD methods differ mainly in *where* the peers stop sharing layers. If every
backbone exposes the same flat, named stage list (the last one is always the classifier ``fc``,
the one before it returns the pooled penultimate feature), one generic cohort builder can split
any backbone at any declared branch point, and one peer taken out of a cohort has exactly the
parameter names of the plain backbone.

Stage names must be attribute names (no dots), so a backbone wrapped around another library's
model (``okd.models.external``) keeps that library's modules under a stage prefix and declares a
``key_map`` from its own keys to the library's: a peer's weights then load into the library's model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    """What a cohort needs to know about a backbone, besides its modules."""

    early: str  # first per-peer stage for DML / MCL-OKD (and the first fork of CL-ILR's tree)
    late: str  # first per-peer stage for ONE / OKDDip (and the second fork of the tree)
    input_size: int  # side of the square training image (32 for CIFAR, 224 for ImageNet)


class Backbone(nn.Module):
    """A classifier built from named stages run in order.

    The stage before ``fc`` must return the pooled feature ``[B, feature_dim]``; ``fc`` maps it
    to logits. Methods use the pooled feature (OKDDip's attention, MCL-OKD's embeddings).
    """

    def __init__(
        self,
        stages: list[tuple[str, nn.Module]],
        spec: BackboneSpec,
        feature_dim: int,
        num_classes: int,
        key_map: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        names = [name for name, _ in stages]
        if names[-1] != "fc":
            raise ValueError(f"the last stage must be 'fc', got {names[-1]!r}")
        for point in (spec.early, spec.late):
            if point not in names:
                raise ValueError(f"branch point {point!r} is not a stage of {names}")
        if names.index(spec.early) > names.index(spec.late):
            raise ValueError("the 'early' branch point must not come after 'late'")
        for name, module in stages:
            self.add_module(name, module)
        self.stage_names: tuple[str, ...] = tuple(names)
        self.spec = spec
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        # okd key prefix -> the key prefix of the network a peer's state dict is meant for (identity if empty)
        self.key_map: dict[str, str] = dict(key_map or {})

    def stage(self, name: str) -> nn.Module:
        return getattr(self, name)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stage_names[:-1]:
            x = self.stage(name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def map_state_keys(state: dict[str, torch.Tensor], key_map: dict[str, str]) -> dict[str, torch.Tensor]:
    """Rename every key by its longest matching prefix in ``key_map``; keys without a match stay as they are."""
    if not key_map:
        return dict(state)
    prefixes = sorted(key_map, key=len, reverse=True)
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        prefix = next((p for p in prefixes if key.startswith(p)), None)
        renamed[key if prefix is None else key_map[prefix] + key[len(prefix):]] = value
    return renamed


def global_pool() -> nn.Sequential:
    """GAP + flatten: the pooled-feature stage of most backbones."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
