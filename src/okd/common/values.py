"""Turning plain data (YAML, command-line strings, checkpoint dicts) into typed option values.

One coercion for every source, so ``--nce-k 8``, ``nce_k: 8`` and ``okd.train(nce_k=8)`` are the same
value, and a wrong type is the same one-line user error wherever it came from.
"""

from __future__ import annotations

import math
import re
from typing import Any

from okd.errors import OKDUserError

TRUE_WORDS = ("true", "yes", "1", "on")
FALSE_WORDS = ("false", "no", "0", "off")


def flag_name(name: str) -> str:
    """``kd_t`` -> ``--kd-t``: how an option is named in messages."""
    return "--" + name.replace("_", "-")


def coerce(name: str, kind: str, value: Any) -> Any:
    """``value`` as ``kind`` ("bool", "int", "float", "str", "list[int]"..., optionally "... | None")."""
    if value is None:
        if "None" in kind:
            return None
        raise OKDUserError(f"option {name} must not be empty")
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in TRUE_WORDS:
                return True
            if str(value).lower() in FALSE_WORDS:
                return False
            raise ValueError
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind.startswith("list"):
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            if not isinstance(value, (list, tuple)):
                raise ValueError
            item = re.match(r"list\[(\w+)\]", kind)
            return [coerce(name, item.group(1) if item else "str", v) for v in value]
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise OKDUserError(f"option {name} has an invalid value {value!r} (expected {kind})") from None


def check_range(name: str, value: float | int | None, minimum: float | None = None, maximum: float | None = None,
                exclusive_minimum: bool = False, exclusive_maximum: bool = False, why: str = "") -> None:
    """Finite and inside the bounds, or one line naming the flag, the range (then ``why``, e.g. " (the
    original code uses 0.1)") and the value given."""
    if value is None or isinstance(value, bool):
        return
    low_bad = minimum is not None and (value <= minimum if exclusive_minimum else value < minimum)
    high_bad = maximum is not None and (value >= maximum if exclusive_maximum else value > maximum)
    if low_bad or high_bad or (isinstance(value, float) and not math.isfinite(value)):
        raise OKDUserError(f"{flag_name(name)} must be {describe_range(minimum, maximum, exclusive_minimum, exclusive_maximum)}{why}, "
                           f"got {value}")


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe_range(minimum: float | None, maximum: float | None, exclusive_minimum: bool, exclusive_maximum: bool) -> str:
    """``> 0``, ``>= 0``, ``in [0, 1)``... as the messages and ``--help`` say it."""
    if maximum is None and minimum is None:
        return "finite"
    if maximum is None:
        return f"{'>' if exclusive_minimum else '>='} {_num(minimum)}"
    if minimum is None:
        return f"{'<' if exclusive_maximum else '<='} {_num(maximum)}"
    return f"in {'(' if exclusive_minimum else '['}{_num(minimum)}, {_num(maximum)}{')' if exclusive_maximum else ']'}"
