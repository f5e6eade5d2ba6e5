"""`python -m node peers [--connect MULTIADDR]`: print the network's capability table.

Asks the node running on the data dir (``--data-dir``, default ``~/.mosaic``) unless
``--connect`` names another peer.  Starts a short-lived client host (fresh identity,
not a node), dials the peer,
fetches its table over ``/mosaic/record/1``, verifies every record (signature,
expiry) and prints a table (or ``--json``), then exits.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from . import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from .storage_options import add_common, local_node_addr


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("peers", help="show the network's capability table",
                       description="Fetch and print the capability records a peer knows.")
    p.add_argument("--connect", metavar="MULTIADDR",
                   help="any peer: /ip4/.../tcp/.../p2p/<peer id> (default: the node running on the data dir)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for dial + fetch")
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import trio

    from node import logs

    logs.setup("warning", libp2p_level="critical")  # libp2p shutdown noise is not the user's problem
    if args.connect is None:
        args.connect, _ = local_node_addr(args)
        if args.connect is None:
            return EXIT_UNREACHABLE
    try:
        return trio.run(_main, args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


async def _main(args: argparse.Namespace) -> int:
    import trio

    from node.net.discovery import DialError, dial, peer_info_from_multiaddr
    from node.net.exchange import ExchangeRefused, fetch_table
    from node.net.host import build_host, listen_multiaddrs
    from node.net.keys import libp2p_key_pair
    from node.net.streams import StreamClosed
    from node.registry import Registry
    from protocol import Identity, ProtocolError

    try:
        peer_info_from_multiaddr(args.connect)
    except DialError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    listen = ["/ip4/127.0.0.1/tcp/0"]
    host = build_host(libp2p_key_pair(Identity.generate()), listen)
    registry = Registry()
    error = None
    code = EXIT_UNREACHABLE
    signed_records = []
    async with host.run(listen_addrs=listen_multiaddrs(listen)):
        # Errors are caught inside the host's nursery so they do not surface as an ExceptionGroup.
        try:
            with trio.fail_after(args.timeout):
                peer_id = await dial(host, args.connect, timeout=args.timeout)
                signed_records = await fetch_table(host, peer_id, None, timeout=args.timeout)
        except DialError as exc:
            error = str(exc)
        except (StreamClosed, ExchangeRefused, ProtocolError) as exc:
            error, code = str(exc), EXIT_FAILED
        except trio.TooSlowError:
            error = f"no answer from {args.connect} within {args.timeout:.0f}s"
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return code
    for signed in signed_records:
        registry.offer(signed, source="stream")
    records = registry.all()
    if args.json:
        print(json.dumps([_as_dict(r) for r in records], indent=2))
    else:
        print(format_table(records))
        rejected = sum(v for k, v in registry.rejected.items() if ":" not in k)
        if rejected:
            print(f"({rejected} invalid records ignored)", file=sys.stderr)
    return EXIT_OK


def _as_dict(record) -> dict[str, object]:
    import msgspec

    data = msgspec.to_builtins(record)
    data.pop("v", None)
    data.pop("t", None)
    data["expires_in_s"] = round(record.expires_at() - time.time(), 1)
    return data


def format_table(records) -> str:
    """A plain-text table: one line per peer, peer ids shortened."""
    header = ("PEER", "NAME", "TAGS", "MODEL", "ADAPTERS", "DEVICE", "LOAD", "QUEUE", "EXPIRES", "ADDRESS")
    rows = [header]
    now = time.time()
    for r in records:
        rows.append((
            "…" + r.peer_id[-8:], r.name, ",".join(r.tags) or "-", r.base_model or "-",
            ",".join(a.name for a in r.adapters) or "-", r.device, f"{r.load:.2f}", str(r.queue_depth),
            f"{r.expires_at() - now:.0f}s", r.multiaddrs[0] if r.multiaddrs else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.append(f"{len(records)} peer(s)")
    return "\n".join(lines)
