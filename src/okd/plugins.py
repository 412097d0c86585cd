"""User modules that register their own backbones and methods (``--plugin my_pkg.my_models``).

A plugin is an ordinary importable module whose import calls ``okd.register_backbone`` /
``okd.register_method``. okd imports the plugins a run names before it resolves ``--arch`` and
``--method``, and saves their names with the run. A saved run never imports them by itself: a
checkpoint or run folder is data, and data must not choose what code runs. Every later command that
rebuilds the model (``okd eval``, ``okd export``, ``--resume``, ``okd.evaluate``, ``okd.load_peer``)
imports a run's plugins only when the user names the same ones (``allow_saved_plugins``).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Iterable

from okd.errors import OKDUserError

_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def import_plugins(names: Iterable[str] | None) -> None:
    """Import each module once (in order); a module that cannot be imported is a user error.

    The current folder is searched last, as ``python -m`` would search it first: a ``my_models.py``
    next to the user works with the ``okd`` script too, and never shadows an installed package.
    """
    for name in names or ():
        if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
            raise OKDUserError(f"--plugin {name!r} is not a Python module name (e.g. my_models or my_pkg.models)")
        if name.split(".")[0] in (*sys.stdlib_module_names, "okd"):
            raise OKDUserError(f"--plugin {name!r} is part of Python or okd, not a plugin: name your own module")
        if name in sys.modules:
            continue
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.append(os.getcwd())
        try:
            importlib.import_module(name)
        except ImportError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise OKDUserError(f"cannot import plugin {name!r}: {first} (install it or put its folder on PYTHONPATH)") from None
        except SyntaxError as exc:
            raise OKDUserError(f"cannot import plugin {name!r}: {exc.msg} ({exc.filename}, line {exc.lineno})") from None
        except SystemExit as exc:  # a plugin must not end okd: exit 2 naming it, as for any other failure
            raise OKDUserError(f"plugin {name!r} called sys.exit({exc.code!r}) while being imported; "
                               "a plugin module must only register backbones/methods") from None
        except Exception as exc:  # noqa: BLE001 - whatever the user's module raises is reported in one line
            first = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise OKDUserError(f"plugin {name!r} raised {type(exc).__name__}{': ' + first if first else ''} while being "
                               "imported (fix the module, or leave out --plugin)") from None


def allow_saved_plugins(needed: Iterable[str] | None, given: Iterable[str] | None, source: str) -> None:
    """Import the plugins a saved run names, but only those the user named too (or that are imported already).

    ``source`` is the checkpoint or run folder, named in the refusal so the user knows what asked
    for the code. A module already in ``sys.modules`` runs no new code, so it needs no permission.
    """
    allowed = set(given or ())
    refused = [name for name in dict.fromkeys(needed or ()) if name not in allowed and name not in sys.modules]
    if refused:
        flags = " ".join(f"--plugin {name}" for name in refused)
        listed = ", ".join(repr(name) for name in refused)
        raise OKDUserError(
            f"{source} was trained with plugin {listed}; a saved run never imports code by itself: if you trust "
            f"the module, name it ({flags}; plugins={refused!r} in Python)"
        )
    import_plugins(needed)


def add_plugin_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, note: str = "") -> None:
    """The ``--plugin`` flag, the same for every subcommand (``note``: what this command adds)."""
    parser.add_argument("--plugin", dest="plugins", action="append", metavar="MODULE",
                        help=f"import this module first, to register your own backbones/methods (repeatable){note}")
