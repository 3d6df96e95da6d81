"""The ``lesa`` command line: argparse subcommands, each a thin call into the package.

Each feature module that offers subcommands defines ``add_commands(subparsers)``; the list
``COMMAND_MODULES`` below names them, so adding a command is one line here.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from lesa.errors import LesaError

# Modules defining ``add_commands(subparsers)``. Imported lazily so `lesa --help` stays fast.
COMMAND_MODULES = [
    "lesa.commands.demo",        # lesa demo, lesa synth
    "lesa.commands.extract",     # lesa extract, lesa merge-shards
    "lesa.commands.train",       # lesa train
    "lesa.commands.evaluate",    # lesa evaluate
    "lesa.commands.convert",     # lesa import-tf, lesa convert-tfrecord
    "lesa.commands.visualize",   # lesa visualize, lesa plot, lesa tag
    "lesa.commands.download",    # lesa download
    "lesa.commands.bench",       # lesa bench
]


def build_parser() -> argparse.ArgumentParser:
    from lesa import __version__

    parser = argparse.ArgumentParser(
        prog="lesa",
        description="LESA: shared multi-attention for multi-label zero-shot learning (PyTorch port).",
    )
    parser.add_argument("--version", action="version", version=f"lesa {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a module not written yet on this branch
            if exc.name == name:
                continue
            raise
        module.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except LesaError as exc:
        print(f"lesa: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # (lesa train says what it saved and how to continue)
        print(f"lesa: interrupted{': ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    return int(result or 0)
