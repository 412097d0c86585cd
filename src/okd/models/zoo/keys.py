"""Each zoo backbone's key map to its source code's state dict, so its weights go both ways.

Why: okd cuts every network into named stages (what a cohort branches at), which renames some of
the source's modules (RepDistiller's ``conv1``/``bn1`` become ``stem.conv1``/``stem.bn1``). A key map
(okd key prefix -> source key prefix, longest prefix wins) undoes that: a RepDistiller or L-MCL
checkpoint (e.g. a pre-trained teacher) loads into okd's backbone, and the tests fill both networks
with the same weights to prove they compute the same function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from okd.errors import OKDUserError
from okd.models.base import Backbone, map_state_keys
from okd.models.registry import BackboneFactory, register_backbone, resolve_backbone_name

KeyMap = dict[str, str]
KeyMapFactory = Callable[[Backbone], KeyMap]

_KEY_MAPS: dict[str, KeyMapFactory] = {}


def stage_key_map(backbone: Backbone, renames: Mapping[str, str]) -> KeyMap:
    """Every stage keeps its name (``layer1.`` -> ``layer1.``) unless ``renames`` gives its source prefix."""
    return {f"{stage}.": renames.get(stage, f"{stage}.") for stage in backbone.stage_names}


def register_key_map(name: str, make: KeyMapFactory) -> None:
    """Declare how ``name``'s keys map to its source's (one source per backbone name)."""
    _KEY_MAPS[name] = make


def zoo_backbone(
    name: str, source: str, renames: Mapping[str, str] | None = None, aliases: tuple[str, ...] = ()
) -> Callable[[BackboneFactory], BackboneFactory]:
    """``register_backbone`` plus a key map of stage renames (the stages not named keep the source's name)."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        register_backbone(name, aliases=aliases, source=source)(factory)
        register_key_map(name, lambda backbone: stage_key_map(backbone, renames or {}))
        return factory

    return decorate


def has_source_keys(name: str) -> bool:
    return resolve_backbone_name(name) in _KEY_MAPS


def source_key_map(name: str, backbone: Backbone) -> KeyMap:
    """The prefix map from ``backbone``'s keys (a ``name`` backbone) to its source's keys."""
    canonical = resolve_backbone_name(name)
    if canonical not in _KEY_MAPS:
        raise OKDUserError(f"{name} has no source key map; the backbones with one are: {', '.join(_KEY_MAPS)}")
    return _KEY_MAPS[canonical](backbone)


def to_source_state_dict(name: str, backbone: Backbone) -> dict[str, torch.Tensor]:
    """``backbone``'s state dict under its source code's key names (loads into the source model)."""
    return map_state_keys(backbone.state_dict(), source_key_map(name, backbone))


def load_source_state_dict(name: str, backbone: Backbone, state: Mapping[str, torch.Tensor]) -> None:
    """Load a state dict saved by the source code (e.g. a RepDistiller teacher) into okd's ``backbone``.

    Exact: every okd key must find its tensor and every source key must be used.
    """
    own = backbone.state_dict()
    okd_to_source = dict(zip(own, map_state_keys(own, source_key_map(name, backbone))))  # renaming keeps the order
    missing = sorted(set(okd_to_source.values()) - set(state))
    unused = sorted(set(state) - set(okd_to_source.values()))
    if missing or unused:
        raise OKDUserError(f"this state dict is not a {name} of the source code: missing {missing[:3]}, unexpected {unused[:3]} "
                           "(check the backbone name and --num-classes)")
    backbone.load_state_dict({key: state[source] for key, source in okd_to_source.items()}, strict=True)
