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
from okd.models.registry import BackboneFactory, backbone_source, register_backbone, resolve_backbone_name

KeyMap = dict[str, str]
KeyMapFactory = Callable[[Backbone], KeyMap]

_KEY_MAPS: dict[tuple[str, str], KeyMapFactory] = {}  # (okd backbone, codebase) -> key map


def stage_key_map(backbone: Backbone, renames: Mapping[str, str]) -> KeyMap:
    """Every stage keeps its name (``layer1.`` -> ``layer1.``) unless ``renames`` gives its source prefix."""
    return {f"{stage}.": renames.get(stage, f"{stage}.") for stage in backbone.stage_names}


def register_key_map(name: str, codebase: str, make: KeyMapFactory) -> None:
    """Declare how ``name``'s keys map to ``codebase``'s (e.g. okd's resnet32 to RepDistiller's and to L-MCL's)."""
    _KEY_MAPS[(name, codebase)] = make


def zoo_backbone(
    name: str, source: str, renames: Mapping[str, str] | None = None, aliases: tuple[str, ...] = ()
) -> Callable[[BackboneFactory], BackboneFactory]:
    """``register_backbone`` plus a key map of stage renames (the stages not named keep the source's name)."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        register_backbone(name, aliases=aliases, source=source)(factory)
        register_key_map(name, source, lambda backbone: stage_key_map(backbone, renames or {}))
        return factory

    return decorate


def source_codebases(name: str) -> list[str]:
    """The codebases whose checkpoints of ``name`` okd can load (empty for most non-zoo backbones)."""
    canonical = resolve_backbone_name(name)
    return [codebase for backbone, codebase in _KEY_MAPS if backbone == canonical]


def source_key_map(name: str, backbone: Backbone, codebase: str | None = None) -> KeyMap:
    """The prefix map from ``backbone``'s keys (a ``name`` backbone) to ``codebase``'s keys.

    ``codebase`` defaults to the one the backbone comes from (``okd models``' source), or the only one known.
    """
    canonical = resolve_backbone_name(name)
    known = source_codebases(canonical)
    if codebase is None and len(known) == 1:
        codebase = known[0]
    elif codebase is None and backbone_source(canonical) in known:
        codebase = backbone_source(canonical)
    if not known:
        with_maps = ", ".join(sorted({backbone for backbone, _ in _KEY_MAPS}))
        raise OKDUserError(f"okd has no key map from {canonical} to another codebase's checkpoints; the backbones with one: {with_maps}")
    if codebase is None:
        raise OKDUserError(f"{canonical} checkpoints may come from {' or '.join(known)}: name the codebase")
    if codebase not in known:
        raise OKDUserError(f"no key map from {canonical} to {codebase}'s checkpoints; it has maps to: {', '.join(known)}")
    return _KEY_MAPS[(canonical, codebase)](backbone)


def to_source_state_dict(name: str, backbone: Backbone, codebase: str | None = None) -> dict[str, torch.Tensor]:
    """``backbone``'s state dict under ``codebase``'s key names (loads into that code's model)."""
    return map_state_keys(backbone.state_dict(), source_key_map(name, backbone, codebase))


def load_source_state_dict(name: str, backbone: Backbone, state: Mapping[str, torch.Tensor], codebase: str | None = None) -> None:
    """Load a state dict saved by ``codebase`` (e.g. a RepDistiller teacher) into okd's ``backbone``.

    Exact: every okd key must find its tensor and every source key must be used.
    """
    own = backbone.state_dict()
    okd_to_source = dict(zip(own, map_state_keys(own, source_key_map(name, backbone, codebase))))  # renaming keeps the order
    missing = sorted(set(okd_to_source.values()) - set(state))
    unused = sorted(set(state) - set(okd_to_source.values()))
    if missing or unused:
        raise OKDUserError(f"this state dict is not a {name} of the source code: missing {missing[:3]}, unexpected {unused[:3]} "
                           "(check the backbone name and the number of classes)")
    backbone.load_state_dict({key: state[source] for key, source in okd_to_source.items()}, strict=True)
