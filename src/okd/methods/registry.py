"""Methods by name, and the reference's ``--arch <method>_<backbone>`` spellings."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from okd.errors import OKDUserError
from okd.methods.base import REGISTRY as _METHODS
from okd.methods.options import Option, check_values
from okd.methods.base import DatasetInfo, OKDMethod
from okd.models.registry import parse_arch

DEFAULT_METHOD = "baseline"  # what --method is unless given: one network per peer, no distillation (the reference line)

# Reference prefixes of --arch, longest first so "mcl_okd_" wins over shorter ones.
ARCH_PREFIXES = {"mcl_okd_": "mcl_okd", "cl_ilr_": "cl_ilr", "okddip_": "okddip", "dml_": "dml", "one_": "one"}
METHOD_ALIASES = {"mcl-okd": "mcl_okd", "mclokd": "mcl_okd", "cl-ilr": "cl_ilr", "clilr": "cl_ilr"}


def register_method(cls: type[OKDMethod]) -> type[OKDMethod]:
    """Class decorator: make an :class:`OKDMethod` subclass trainable as ``--method <cls.name>``.

    The class sets ``name`` (and may set ``default_share``, ``allowed_shares``, ``min_peers``), declares
    its ``options`` and implements ``losses``; its ``__init__`` receives the values of those options.
    A user's method lives in a plugin module (README: "Your own model and data").
    """
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or registered twice")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    return list(_METHODS)


def resolve_method_name(name: str) -> str:
    key = METHOD_ALIASES.get(name.lower(), name.lower())
    if key not in _METHODS:
        raise OKDUserError(f"unknown method {name!r}; known methods: {', '.join(list_methods())}")
    return key


def get_method_class(name: str) -> type[OKDMethod]:
    return _METHODS[resolve_method_name(name)]


def split_arch(arch: str) -> tuple[str | None, str]:
    """``'dml_resnet32'`` -> ``('dml', 'resnet32')``; plain backbone names give ``(None, names)``.

    The backbone part may name one backbone per peer (``'dml_resnet32,resnet110'``); it comes back
    as canonical names joined by commas, one per name given.
    """
    lowered = arch.lower()
    method = None
    for prefix, candidate in sorted(ARCH_PREFIXES.items(), key=lambda kv: -len(kv[0])):
        if lowered.startswith(prefix):
            method, arch = candidate, arch[len(prefix):]
            break
    return method, ",".join(parse_arch(arch))


def build_method(
    name: str,
    backbone: str | Sequence[str],
    num_classes: int,
    num_peers: int,
    share: str | None = None,
    dataset: DatasetInfo | None = None,
    **options: Any,
) -> OKDMethod:
    """Build a method; ``options`` may hold every method's knobs, each method takes the ones it declares
    (``None``: the method's default).

    ``backbone``: one name for every peer, or one per peer (a list, or names joined by commas).
    """
    cls = get_method_class(name)
    if num_peers < cls.min_peers:
        raise OKDUserError(f"method {cls.name!r} needs at least {cls.min_peers} peers, got --num-peers {num_peers}")
    if share is not None and share not in cls.allowed_shares:
        raise OKDUserError(
            f"method {cls.name!r} does not support --share {share!r}; choose one of {', '.join(cls.allowed_shares)}"
        )
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = _own_options(cls, options)
    if "dataset" in accepted:
        kwargs["dataset"] = dataset
    return cls(backbone=backbone, num_classes=num_classes, num_peers=num_peers, share=share, **kwargs)


def _own_options(cls: type[OKDMethod], options: dict[str, Any]) -> dict[str, Any]:
    """The values ``options`` gives for the options ``cls`` declares (``None``: unset)."""
    declared = {option.name for option in cls.declared_options()}
    return {k: v for k, v in options.items() if k in declared and v is not None}


def stand_in_dataset(name: str, num_classes: int, **options: Any) -> DatasetInfo:
    """A balanced label set just large enough for method ``name`` with ``options``
    (``OKDMethod.stand_in_per_class``): what a trained method is rebuilt on without its data."""
    cls = get_method_class(name)
    values = check_values(cls.name, cls.declared_options(), _own_options(cls, options), fill=True)
    return DatasetInfo.balanced(num_classes, cls.stand_in_per_class(num_classes, values))


def option_owners() -> dict[str, list[str]]:
    """Each option name with the registered methods that declare it, in registration order."""
    owners: dict[str, list[str]] = {}
    for name, cls in _METHODS.items():
        for option in cls.declared_options():
            owners.setdefault(option.name, []).append(name)
    return owners


def all_options() -> dict[str, Option]:
    """Every registered method's options by name (the first declaration of a shared name): what the
    command line offers before it knows the method, and the names a config file may use."""
    found: dict[str, Option] = {}
    for cls in _METHODS.values():
        for option in cls.declared_options():
            found.setdefault(option.name, option)
    return found
