"""Backbones by name, in the spirit of timm's registry: one decorator, one factory, aliases."""

from __future__ import annotations

from collections.abc import Callable

from okd.errors import OKDUserError
from okd.models.base import Backbone

BackboneFactory = Callable[..., Backbone]

_BACKBONES: dict[str, BackboneFactory] = {}
_DEFAULT_CLASSES: dict[str, int] = {}
_ALIASES: dict[str, str] = {}


def register_backbone(
    name: str, *, default_num_classes: int = 100, aliases: tuple[str, ...] = ()
) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register ``factory(num_classes=...) -> Backbone`` under ``name`` (and the reference's spellings).

    The factory builds a fresh :class:`Backbone` (named stages ending in ``fc``, the pooled feature
    just before it, ``early``/``late`` branch points); every method can then train a cohort of it.
    A user's backbone lives in a plugin module (README: "Your own model and data").
    """

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
