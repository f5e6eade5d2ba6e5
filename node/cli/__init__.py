"""`python -m node <command>`: one module per subcommand.

Each command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
Modules import heavy dependencies (torch, libp2p) inside ``run`` so that
``--help`` and light commands start fast.

Exit codes are the same for every command (:data:`EXIT_CODES`, shown by ``--help``).
"""

from __future__ import annotations

import argparse
import importlib

from .exit_codes import (
    EXIT_CODES,
    EXIT_FAILED,
    EXIT_IN_USE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)

# Order is the order shown in --help.
COMMANDS = (
    "start",
    "peers",
    "query",
    "status",
    "publish",
    "fetch",
    "pin",
    "eval",
    "models",
    "train",
    "merge",
    "spot_check",
    "self_eval",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m node", description="Mosaic participatory AI node",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        module.add_parser(sub)
    for command in sub.choices.values():  # each `COMMAND --help` lists them too
        command.epilog = EXIT_CODES
        command.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .interrupt import say_interrupted

    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return say_interrupted()
    except BaseExceptionGroup as group:  # Ctrl-C that landed inside a task of a nursery
        if group.subgroup(KeyboardInterrupt) is None:
            raise
        return say_interrupted()
