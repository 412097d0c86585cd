"""Backbones by name, in the spirit of timm's registry: one decorator, one factory, aliases."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from okd.errors import OKDUserError
from okd.models.base import Backbone

BackboneFactory = Callable[..., Backbone]

_BACKBONES: dict[str, BackboneFactory] = {}
_DEFAULT_CLASSES: dict[str, int] = {}
_ALIASES: dict[str, str] = {}


def register_backbone(
    name: str, *, default_num_classes: int = 100, aliases: tuple[str, ...] = ()
) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register ``factory(num_classes=...) -> Backbone`` under ``name`` (and the reference's spellings)."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        _BACKBONES[name] = factory
        _DEFAULT_CLASSES[name] = default_num_classes
        for alias in aliases:
            _ALIASES[alias.lower()] = name
        return factory

    return decorate


def list_backbones() -> list[str]:
    """Canonical backbone names, in registration order."""
    return list(_BACKBONES)


def resolve_backbone_name(name: str) -> str:
    """Canonical name for ``name`` or one of its aliases; a clear error listing the known ones."""
    key = name.lower()
    if key in _BACKBONES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    known = ", ".join(list_backbones())
    raise OKDUserError(f"unknown backbone {name!r}; known backbones: {known}")


def parse_arch(arch: str | Sequence[str]) -> list[str]:
    """Canonical names of an ``--arch`` value: one backbone, or one per peer (``"resnet32,resnet110"``).

    Split on commas before resolving, so every part may be any registered name or alias.
    """
    parts = arch.split(",") if isinstance(arch, str) else list(arch)
    names = [part.strip() for part in parts]
    if not names or any(not name for name in names):
        raise OKDUserError(f"--arch {arch!r} has an empty backbone name; give one name, or one per peer separated by commas")
    return [resolve_backbone_name(name) for name in names]


def format_arch(names: Sequence[str]) -> str:
    """The one spelling of a cohort's backbones: ``"resnet32"`` if every peer is one, else ``"resnet32,resnet110"``."""
    return names[0] if len(set(names)) == 1 else ",".join(names)


def arch_label(arch: str) -> str:
    """How reports and logs show an ``--arch`` value: ``"resnet32,resnet110"`` -> ``"resnet32+resnet110"``."""
    return "+".join(name.strip() for name in arch.split(","))


def default_num_classes(name: str) -> int:
    return _DEFAULT_CLASSES[resolve_backbone_name(name)]


def create_backbone(name: str, num_classes: int | None = None) -> Backbone:
    """Build a freshly initialised backbone (100 classes for CIFAR nets, 1000 for resnet34 by default)."""
    canonical = resolve_backbone_name(name)
    if num_classes is None:
        num_classes = _DEFAULT_CLASSES[canonical]
    if num_classes < 1:
        raise OKDUserError(f"num_classes must be >= 1, got {num_classes}")
    return _BACKBONES[canonical](num_classes=num_classes)
