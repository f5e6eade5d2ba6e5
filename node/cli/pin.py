"""`python -m node pin CID` / `unpin CID` / `ls` / `gc`: manage the local block store.

A pinned DAG is kept by ``gc`` and provided to the network by a running node: when
a node runs on the data dir, ``pin`` asks it to provide the CID now and ``unpin``
to stop (through its local control endpoint; without one it would notice only on
its next reprovide sweep).  Pinning needs the whole DAG locally (``fetch`` pins
what it downloads).
"""

from __future__ import annotations

import argparse
import sys

from . import EXIT_FAILED, EXIT_OK
from .storage_options import add_common, build_config


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pin", help="keep content (a CID) in the local block store")
    p.add_argument("cid")
    p.add_argument("--name", default="", help="a label shown by `ls`")
    add_common(p)
    p.set_defaults(run=run_pin)
    p = sub.add_parser("unpin", help="let `gc` remove content")
    p.add_argument("cid")
    add_common(p)
    p.set_defaults(run=run_unpin)
    p = sub.add_parser("ls", help="list pinned content")
    add_common(p)
    p.set_defaults(run=run_ls)
    p = sub.add_parser("gc", help="delete blocks not reachable from a pin")
    add_common(p)
    p.set_defaults(run=run_gc)


def _open(args: argparse.Namespace):
    from node.storage import BlockStore

    return BlockStore.for_data_dir(build_config(args).data_path)


def _cid(text: str):
    from protocol.cid import parse_cid

    return parse_cid(text)


def _guard(fn):
    def wrapper(args: argparse.Namespace) -> int:
        from node.config import ConfigError
        from node.storage import StorageError
        from protocol.errors import ProtocolError

        try:
            return fn(args)
        except (ConfigError, ProtocolError, StorageError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED

    return wrapper


def _tell_running_node(args: argparse.Namespace, op: str, cid: str) -> int:
    from node.local_node import running_node

    from .publish import tell_running_node

    running = running_node(build_config(args).data_path)
    return EXIT_OK if running is None else tell_running_node(running, op, cid)


@_guard
def run_pin(args: argparse.Namespace) -> int:
    pin = _open(args).pin(_cid(args.cid), args.name)
    print(f"pinned {pin.cid} ({pin.size} bytes)")
    return _tell_running_node(args, "provide", pin.cid)


@_guard
def run_unpin(args: argparse.Namespace) -> int:
    if not _open(args).unpin(_cid(args.cid)):
        print(f"error: {args.cid} is not pinned", file=sys.stderr)
        return EXIT_FAILED
    print(f"unpinned {args.cid}")
    return _tell_running_node(args, "unprovide", str(_cid(args.cid)))


@_guard
def run_ls(args: argparse.Namespace) -> int:
    for pin in _open(args).pins():
        print(f"{pin.cid}\t{pin.size}\t{pin.name}")
    return 0


@_guard
def run_gc(args: argparse.Namespace) -> int:
    blocks, freed = _open(args).gc()
    print(f"removed {blocks} blocks ({freed} bytes)")
    return 0
