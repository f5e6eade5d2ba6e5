"""`python -m node <command>`: one module per subcommand.

Each command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``.
Modules import heavy dependencies (torch, libp2p) inside ``run`` so that
``--help`` and light commands start fast.
"""

from __future__ import annotations

import argparse
import importlib

# Order is the order shown in --help.
COMMANDS = ("start", "peers", "query", "status", "publish", "fetch", "pin", "eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m node", description="Mosaic participatory AI node")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"{__name__}.{name}")
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)
