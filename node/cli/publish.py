"""`python -m node publish PATH`: import a file or directory, print its CID, provide it.

The CID is what ``ipfs add -r --cid-version=1`` prints for PATH (``--cid-version 0``:
plain ``ipfs add``).  Content goes into the node's block store
(``<data dir>/ipfs``) and is pinned.  Unless ``--offline``, a node then starts,
announces itself as a provider in the DHT and serves the blocks until Ctrl-C.
(With a ``start`` node already running on the same data dir, use ``--offline``:
that node provides new pins on its next reprovide sweep.)
"""

from __future__ import annotations

import argparse
import os
import sys

from .storage_options import add_common, add_network, setup


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="add a file or directory to the block store and provide it",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="file or directory (e.g. a model or LoRA adapter dir)")
    p.add_argument("--cid-version", type=int, choices=[0, 1], default=1, help="1 (default, raw leaves) or 0 (Kubo's plain `ipfs add`)")
    p.add_argument("--offline", action="store_true", help="only import and pin; do not start a node")
    p.add_argument("--ipfs-api", metavar="MULTIADDR", help="also add it to this external IPFS daemon (Kubo RPC API)")
    add_common(p)
    add_network(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not os.path.exists(args.path):
        print(f"error: {args.path} does not exist", file=sys.stderr)
        return 2
    config = setup(args)
    if config is None:
        return 2
    from node.storage import BlockStore, StorageError
    from node.storage.importer import import_path
    from protocol.unixfs import AddOptions

    store = BlockStore.for_data_dir(config.data_path)
    try:
        entry = import_path(store, args.path, AddOptions(cid_version=args.cid_version))
        store.pin(entry.cid, os.path.basename(os.path.abspath(args.path)))
    except (OSError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(entry.cid, flush=True)
    api = args.ipfs_api or config.storage.ipfs_api
    if api:
        from node.storage.ipfs_api import IpfsApiError, add_to_daemon

        try:
            daemon_cid = add_to_daemon(api, args.path, cid_version=args.cid_version)
        except IpfsApiError as exc:
            print(f"error: IPFS daemon at {api}: {exc}", file=sys.stderr)
            return 1
        if daemon_cid != str(entry.cid):
            print(f"warning: the daemon computed {daemon_cid} for the same content", file=sys.stderr)
    if args.offline:
        return 0
    import trio

    return trio.run(_serve, config, entry.cid)


async def _serve(config, cid) -> int:
    import signal

    import trio

    from node.app import Node
    from node.storage import StorageService

    storage = StorageService.from_config(config)
    node = Node(config, services=[storage])
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            await storage.announce(cid)
            print(f"providing {cid} as {node.full_multiaddrs()[0]} (Ctrl-C to stop)", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
    return 0
