"""A method's options, declared once in the method's own file.

Each :class:`Option` is the single source of a knob: the CLI flag (``kd_t`` -> ``--kd-t`` plus its
aliases, e.g. the original scripts' ``--kd_T``), the YAML key, the ``okd.train(kd_t=...)`` keyword,
the ``--help`` line, the validation and the saved ``config.yaml`` key all come from it. Two methods
may declare the same name with their own default, range and help: each declaration is its method's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from okd.common.values import check_range, coerce, describe_range, flag_name
from okd.errors import OKDUserError

_TYPES = {int: "int", float: "float", bool: "bool", str: "str"}


@dataclass(frozen=True)
class Option:
    """One method option: ``name`` (a Python identifier), its type, default and help, then its rules."""

    name: str
    type: type
    default: Any
    help: str
    choices: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    exclusive_maximum: bool = False
    aliases: tuple[str, ...] = ()  # extra command-line spellings, e.g. "--kd_T", "-a"
    check: Callable[[Any], None] | None = None  # a rule the fields cannot say; raises OKDUserError

    def __post_init__(self) -> None:
        if not self.name.isidentifier() or self.type not in _TYPES:
            raise ValueError(f"option {self.name!r}: a Python identifier of type int, float, bool or str")

    @property
    def flag(self) -> str:
        return flag_name(self.name)

    @property
    def flags(self) -> tuple[str, ...]:
        """Every command-line spelling: ``--kd-t``, ``--kd_t`` and the declared aliases."""
        underscored = "--" + self.name
        return tuple(dict.fromkeys((self.flag, underscored, *self.aliases)))

    def describe(self) -> str:
        """The ``--help`` text: the help, then the default and the allowed values."""
        rules = []
        if self.choices:
            rules.append(" | ".join(self.choices))
        elif self.type in (int, float) and (self.minimum is not None or self.maximum is not None):
            rules.append(describe_range(self.minimum, self.maximum, self.exclusive_minimum, self.exclusive_maximum))
        rules.append(f"default {self.default}")
        return f"{self.help} ({'; '.join(rules)})"

    def validate(self, value: Any) -> Any:
        """The typed, checked value of ``value`` (a string from the command line, YAML data, a Python value)."""
        value = coerce(self.name, _TYPES[self.type], value)
        if self.type is str and self.choices:
            value = value.lower()
        if self.check is not None:
            self.check(value)
        if self.choices and value not in self.choices:
            raise OKDUserError(f"{self.flag} must be {' or '.join(self.choices)}, got {value!r}")
        if self.type in (int, float):
            check_range(self.name, value, self.minimum, self.maximum, self.exclusive_minimum, self.exclusive_maximum)
        return value


TEMPERATURE_FLOOR = 0.01  # logits / T overflow float32's softmax long before T reaches 0


def temperature_floor(name: str) -> Callable[[Any], None]:
    """The ``check`` of a temperature option: a positive value below the floor is refused (zero, negative
    and NaN values are left to the range rule, which says "> 0")."""

    def check(value: float) -> None:
        if 0 < value < TEMPERATURE_FLOOR:
            raise OKDUserError(f"{flag_name(name)} must be >= {TEMPERATURE_FLOOR} (a temperature below it overflows "
                               f"the softmax), got {value}")

    return check


def temperature(default: float, help: str = "distillation temperature") -> Option:
    """The ``kd_t`` option most methods declare, with the original scripts' ``--kd_T`` spelling."""
    return Option("kd_t", float, default, help, minimum=0.0, exclusive_minimum=True, aliases=("--kd_T", "--kd-T"),
                  check=temperature_floor("kd_t"))


class OptionValues(dict):
    """A method's checked option values, read as attributes (``self.opt.kd_t``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def signature_options(init: Callable[..., Any]) -> tuple[Option, ...]:
    """Options of a method that declares none but names them in its ``__init__`` (the older plugin
    style): one per keyword with a default, typed by its annotation or default; its ``__init__`` checks them."""
    skip = {"self", "backbone", "num_classes", "num_peers", "share", "dataset"}
    found = []
    for p in inspect.signature(init).parameters.values():
        if p.name in skip or p.default is inspect.Parameter.empty or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        annotation = p.annotation if isinstance(p.annotation, str) else getattr(p.annotation, "__name__", "")
        kind = next((t for t, label in _TYPES.items() if annotation.startswith(label)), type(p.default))
        found.append(Option(p.name, kind if kind in _TYPES else str, p.default, "(from the method's __init__)"))
    return tuple(found)


def check_values(method: str, declared: tuple[Option, ...], given: Mapping[str, Any], fill: bool) -> OptionValues:
    """``given`` checked against ``declared`` (an unknown name is a user error); with ``fill``, the
    defaults of the options not given too. ``None`` means "not given"."""
    by_name = {o.name: o for o in declared}
    unknown = sorted(set(given) - set(by_name))
    if unknown:
        known = ", ".join(by_name) or "none"
        raise OKDUserError(f"method {method!r} has no option {unknown[0]}; its options: {known}")
    values = OptionValues()
    for option in declared:
        value = given.get(option.name)
        if value is not None:
            values[option.name] = option.validate(value)
        elif fill:
            values[option.name] = option.default
    return values
