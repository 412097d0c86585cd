"""Load the CIFAR pickles without letting a crafted file run code.

``pickle.load`` calls whatever callables a file names; a downloaded or shared dataset file is
untrusted input. This unpickler resolves only the few globals that numpy arrays and plain
containers need and refuses everything else before it is called.
"""

from __future__ import annotations

import builtins
import importlib
import io
import pickle
from typing import Any

import numpy as np

_ALLOWED_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "str", "int", "float", "complex", "bool"}
)


def _numpy_core(submodule: str) -> Any:
    """numpy's core submodule under its 2.x name, or its 1.x name on older numpy."""
    for core in ("numpy._core", "numpy.core"):
        try:
            return importlib.import_module(f"{core}.{submodule}")
        except ImportError:
            continue
    raise ImportError(f"numpy core module {submodule} not found")


def _numpy_global(module: str, name: str) -> Any | None:
    """numpy callables needed to rebuild arrays: ndarray/dtype and the core reconstructors."""
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
        return getattr(_numpy_core("multiarray"), name)
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
        return _numpy_core("numeric")._frombuffer
    return None


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` knows only numpy arrays and plain builtin types."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("builtins", "__builtin__") and name in _ALLOWED_BUILTINS:
            return getattr(builtins, name)
        if module == "_codecs" and name == "encode":  # bytes in protocol-2 pickles written by Python 3
            import _codecs

            return _codecs.encode
        found = _numpy_global(module, name)
        if found is None:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name} (only numpy arrays and plain data are allowed)")
        return found


def safe_loads(raw: bytes) -> Any:
    """Unpickle ``raw`` (Python 2 or 3 pickle) allowing only numpy arrays and plain data.

    Python 2 strings are decoded as latin-1 (as torchvision does), which keeps array buffers
    byte-exact and turns the official release's str keys into ``str``.
    """
    return RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
