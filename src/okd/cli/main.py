"""The ``okd`` command: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from okd import __version__
from okd.errors import OKDUserError

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


def build_parser() -> argparse.ArgumentParser:
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
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except OKDUserError as exc:
        print(f"okd {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"okd {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `okd report ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
