"""Backbones by name, in the spirit of timm's registry: one decorator, one factory, aliases.

Names with a library prefix (``timm:NAME``, ``tv:NAME``, ``torchvision:NAME``) go to
``okd.models.external``, which wraps that library's model; every other name is okd's own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from torch import nn

from okd.errors import OKDUserError
from okd.models.base import Backbone, BackboneSpec

BackboneFactory = Callable[..., Backbone]

_BACKBONES: dict[str, BackboneFactory] = {}
_DEFAULT_CLASSES: dict[str, int] = {}
_ALIASES: dict[str, str] = {}
_SOURCES: dict[str, str] = {}


def register_backbone(
    name: str, *, default_num_classes: int = 100, aliases: tuple[str, ...] = (), source: str = "user"
) -> Callable[[BackboneFactory], BackboneFactory]:
    """Register ``factory(num_classes=...) -> Backbone`` under ``name`` (and the reference's spellings).

    The factory builds a fresh :class:`Backbone` (named stages ending in ``fc``, the pooled feature
    just before it, ``early``/``late`` branch points); every method can then train a cohort of it.
    A user's backbone lives in a plugin module (README: "Your own model and data"). ``source`` says
    whose definition it reproduces (``okd models`` shows it): names alone can clash between codebases.
    """

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} registered twice")
        _BACKBONES[name] = factory
        _DEFAULT_CLASSES[name] = default_num_classes
        _SOURCES[name] = source
        for alias in aliases:
            _ALIASES[alias.lower()] = name
        return factory

    return decorate


def list_backbones() -> list[str]:
    """Canonical backbone names, in registration order."""
    return list(_BACKBONES)


def backbone_source(name: str) -> str:
    """Whose code a backbone reproduces (e.g. ``"RepDistiller"``), or the library of a timm:/tv: name."""
    canonical = resolve_backbone_name(name)
    if is_external(canonical):
        return canonical.partition(":")[0]
    return _SOURCES[canonical]


def is_external(name: str) -> bool:
    """True for a ``timm:`` / ``tv:`` / ``torchvision:`` name (no library is imported to answer)."""
    prefix, sep, _ = name.partition(":")
    return bool(sep) and prefix.strip().lower() in ("timm", "tv", "torchvision")


def resolve_backbone_name(name: str) -> str:
    """Canonical name for ``name`` or one of its aliases; a clear error listing the known ones."""
    if is_external(name):
        from okd.models import external

        return external.canonical_name(name)
    key = name.lower()
    if key in _BACKBONES:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    known = ", ".join(list_backbones())
    raise OKDUserError(f"unknown backbone {name!r}; known backbones: {known}, or timm:NAME / tv:NAME")


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
    canonical = resolve_backbone_name(name)
    if is_external(canonical):
        from okd.models import external

        return external.default_num_classes(canonical)
    return _DEFAULT_CLASSES[canonical]


@dataclass(frozen=True)
class BackboneOptions:
    """Run-level choices about every backbone a run builds (TrainConfig's early / late / pretrained)."""

    early: str | None = None  # override of the backbone's ``early`` branch point (a stage name)
    late: str | None = None  # override of ``late``
    pretrained: bool = False  # timm/torchvision weights from the local cache


_OPTIONS: ContextVar[BackboneOptions] = ContextVar("okd_backbone_options", default=BackboneOptions())


@contextmanager
def backbone_options(options: BackboneOptions) -> Iterator[None]:
    """Apply ``options`` to every ``create_backbone`` call inside the block.

    Why a scope: methods build their cohorts from a backbone *name*, one factory call per peer;
    run-level backbone choices reach those calls here instead of through every method's signature.
    """
    token = _OPTIONS.set(options)
    try:
        yield
    finally:
        _OPTIONS.reset(token)


def _num_classes(canonical: str, num_classes: int | None) -> int:
    if num_classes is None:
        num_classes = default_num_classes(canonical)
    if num_classes < 1:
        raise OKDUserError(f"num_classes must be >= 1, got {num_classes}")
    return num_classes


def create_backbone(name: str, num_classes: int | None = None, options: BackboneOptions | None = None) -> Backbone:
    """Build a freshly initialised backbone (100 classes for CIFAR nets, 1000 for resnet34 and library models).

    ``options`` default to those of the enclosing ``backbone_options`` block (none outside one).
    """
    options = options or _OPTIONS.get()
    canonical = resolve_backbone_name(name)
    num_classes = _num_classes(canonical, num_classes)
    if is_external(canonical):
        from okd.models import external

        backbone = external.create_external_backbone(canonical, num_classes, options.pretrained)
    else:
        if options.pretrained:
            raise OKDUserError(f"--pretrained needs a timm:NAME or tv:NAME backbone; okd's own {canonical} has no pretrained weights")
        backbone = _BACKBONES[canonical](num_classes=num_classes)
    if options.early is not None or options.late is not None:
        backbone.spec = _branch_points(canonical, backbone, options.early, options.late)
    return backbone


def _branch_points(name: str, backbone: Backbone, early: str | None, late: str | None) -> BackboneSpec:
    """The backbone's spec with ``--early`` / ``--late`` applied, after checking they name its stages in order."""
    stages = backbone.stage_names
    listed = ", ".join(stages)
    for flag, value in (("--early", early), ("--late", late)):
        if value is not None and value not in stages:
            raise OKDUserError(f"{flag} {value!r} is not a stage of {name}; its stages are: {listed}")
    early = early or backbone.spec.early
    late = late or backbone.spec.late
    if stages.index(early) > stages.index(late):
        raise OKDUserError(f"--early {early!r} comes after --late {late!r} in {name}'s stages ({listed}); early must not be after late")
    return dataclasses.replace(backbone.spec, early=early, late=late)


def create_plain_network(name: str, num_classes: int | None = None) -> nn.Module:
    """The network one peer's state dict (``Cohort.peer_state_dict``) loads into with ``strict=True``:
    the library's own model for timm/torchvision backbones, the okd backbone otherwise."""
    canonical = resolve_backbone_name(name)
    num_classes = _num_classes(canonical, num_classes)
    if is_external(canonical):
        from okd.models import external

        return external.create_library_model(canonical, num_classes)
    return _BACKBONES[canonical](num_classes=num_classes)
