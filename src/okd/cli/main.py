"""The ``okd`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence

from okd import __version__
from okd.errors import OKDUserError, OKDWarning

SUBCOMMANDS = {
    "train": "okd.cli.train",
    "eval": "okd.cli.evaluate",
    "models": "okd.cli.models",
    "report": "okd.cli.report",
    "plot": "okd.cli.plot",
    "export": "okd.cli.export",
    "predict": "okd.cli.predict",
    "reproduce": "okd.cli.reproduce",
}


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``okd`` parser; for ``okd train`` ``argv``, with the options of the method it names (its --help)."""
    parser = argparse.ArgumentParser(
        prog="okd",
        description="Online knowledge distillation: train a cohort of peers that teach each other.",
    )
    parser.add_argument("--version", action="version", version=f"okd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    import importlib

    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        if name == "train" and argv and argv[0] == "train":
            module.add_parser(sub, module.method_named_in(argv[1:]))
        else:
            module.add_parser(sub)
    return parser


def _one_line_warnings(command: str, show_other: Callable) -> Callable:
    """``warnings.showwarning`` that prints an OKDWarning as ``okd <command>: warning: ...`` (no file, no line)."""
    def show(message: Warning | str, category: type[Warning], *rest: object, **named: object) -> None:
        if issubclass(category, OKDWarning):
            print(f"{command}: warning: {message}", file=sys.stderr)
        else:
            show_other(message, category, *rest, **named)
    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a user error is one line and exit 2, Ctrl-C at any moment exit 130, never a traceback."""
    command = "okd"
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        parser = build_parser(argv)  # imports torch: where a Ctrl-C is likeliest
        args = parser.parse_args(argv)
        command = f"okd {args.command}"
        with warnings.catch_warnings():
            warnings.simplefilter("always", OKDWarning)
            warnings.showwarning = _one_line_warnings(command, warnings.showwarning)
            return int(args.run(args) or 0)
    except OKDUserError as exc:
        print(f"{command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `okd report ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0

if __name__ == "__main__":
    raise SystemExit(main())
