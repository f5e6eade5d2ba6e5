"""`python -m node fetch CID`: download content by CID from the network into a directory.

Providers come from ``--peer`` (multiaddrs with ``/p2p/<id>``) and from the DHT
(reached through ``--bootstrap`` / the config).  Blocks are hash-checked, written to
the block store as they arrive and pinned; an interrupted fetch resumes.  The
content is then written to ``-o`` (default ``./<CID>``).

The temporary node uses a throw-away identity so it can run next to a ``start``
node sharing the same data dir (block store writes are atomic).
"""

from __future__ import annotations

import argparse
import sys

from .storage_options import add_common, add_network, setup


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="download content by CID (multi-provider, verified, resumable)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("cid")
    p.add_argument("-o", "--output", metavar="PATH", help="where to write the file or directory (default ./<CID>)")
    p.add_argument("--peer", action="append", default=[], metavar="MULTIADDR", help="a provider to fetch from (repeatable)")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common(p)
    add_network(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from protocol.cid import parse_cid
    from protocol.errors import ProtocolError

    try:
        cid = parse_cid(args.cid)
    except ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    config = setup(args)
    if config is None:
        return 2
    if not args.listen:
        config.net.listen = ["/ip4/0.0.0.0/tcp/0"]
    import trio

    return trio.run(_fetch, config, cid, args)


async def _fetch(config, cid, args) -> int:
    import copy
    import tempfile
    from pathlib import Path

    import trio

    from node.app import Node
    from node.net.discovery import DialError
    from node.storage import BlockStore, FetchError, StorageError, StorageService

    store = BlockStore.for_data_dir(config.data_path)
    storage = StorageService(store)
    output = Path(args.output or str(cid))
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=str(cid)[:16], file=sys.stderr)

    def progress(done: int, total: int | None) -> None:
        if bar is not None:
            if total and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

    with tempfile.TemporaryDirectory(prefix="mosaic-fetch-") as ephemeral:
        node_config = copy.deepcopy(config)
        node_config.data_dir = ephemeral  # throw-away identity; blocks still go to `store`
        node = Node(node_config, services=[storage])
        try:
            with trio.fail_after(args.timeout):
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.run)
                    peers = []
                    for addr in args.peer:
                        try:
                            peers.append(await node.connect(addr))
                        except DialError as exc:
                            print(f"warning: cannot reach {addr}: {exc}", file=sys.stderr)
                    stats = await storage.fetch(cid, peers=peers, progress=progress)
                    await storage.export(cid, output)
                    nursery.cancel_scope.cancel()
        except trio.TooSlowError:
            print(f"error: fetch of {cid} timed out after {args.timeout:.0f}s (run again to resume)", file=sys.stderr)
            return 1
        except (FetchError, StorageError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            if bar is not None:
                bar.close()
    mib = stats.bytes_fetched / 2**20
    rate = mib / stats.seconds if stats.seconds else 0.0
    print(f"fetched {cid} -> {output} ({mib:.1f} MiB from {len(stats.bytes_by_peer)} providers, "
          f"{stats.blocks_already_local} blocks already local, {rate:.1f} MiB/s)", flush=True)
    return 0
