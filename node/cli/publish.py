"""`python -m node publish PATH`: import a file or directory, print its CID, provide it.

The CID is what ``ipfs add -r --cid-version=1`` prints for PATH (``--cid-version 0``:
plain ``ipfs add``).  Content goes into the node's block store
(``<data dir>/ipfs``) and is pinned.  Then:

* a node already runs on the data dir: it is asked to provide the CID (through
  its local control endpoint) and ``publish`` exits; no second host with the
  node's identity is started;
* else, unless ``--offline``, a node starts (holding the data-dir lock),
  announces itself as a provider in the DHT and serves the blocks until Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import EXIT_FAILED, EXIT_IN_USE, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from .storage_options import add_common, add_network, setup


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="add a file or directory to the block store and provide it",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("path", help="file or directory (e.g. a model or LoRA adapter dir)")
    p.add_argument(
        "--cid-version",
        type=int,
        choices=[0, 1],
        default=1,
        help="1 (default, raw leaves) or 0 (Kubo's plain `ipfs add`)",
    )
    p.add_argument("--offline", action="store_true", help="only import and pin; do not start a node")
    p.add_argument(
        "--follow-links",
        action="store_true",
        help="copy in the targets of symlinks leaving PATH (default: refuse them), e.g. for a Hugging Face snapshot",
    )
    p.add_argument("--ipfs-api", metavar="MULTIADDR", help="also add it to this external IPFS daemon (Kubo RPC API)")
    add_common(p)
    add_network(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not os.path.exists(args.path):
        print(f"error: {args.path} does not exist", file=sys.stderr)
        return EXIT_USAGE
    config = setup(args)
    if config is None:
        return EXIT_USAGE
    from node.storage import BlockStore, StorageError
    from node.storage.importer import import_path
    from protocol.unixfs import AddOptions

    store = BlockStore.for_data_dir(config.data_path)
    try:
        entry = import_path(
            store, args.path, AddOptions(cid_version=args.cid_version), follow_external_links=args.follow_links
        )
        store.pin(entry.cid, os.path.basename(os.path.abspath(args.path)))
    except (OSError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(entry.cid, flush=True)
    api = args.ipfs_api or config.storage.ipfs_api
    if api:
        from node.storage.ipfs_api import IpfsApiError, add_to_daemon

        try:
            daemon_cid = add_to_daemon(api, args.path, cid_version=args.cid_version)
        except IpfsApiError as exc:
            print(f"error: IPFS daemon at {api}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if daemon_cid != str(entry.cid):
            print(f"warning: the daemon computed {daemon_cid} for the same content", file=sys.stderr)
    from node.local_node import DataDirBusy, DataDirLock, running_node

    running = running_node(config.data_path)
    if running is not None:
        return tell_running_node(running, "provide", str(entry.cid))
    if args.offline:
        return EXIT_OK
    from node.net.ports import PortInUse, check_listen_addrs

    if not args.listen:
        config.net.listen = ["/ip4/0.0.0.0/tcp/0"]  # a port of its own: 4001 is the `start` node's
    try:
        check_listen_addrs(config.net.listen)
    except PortInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_IN_USE
    lock = DataDirLock(config.data_path)
    try:
        lock.acquire()
    except DataDirBusy as exc:  # a node started since we looked
        print(f"error: {exc} (the content is pinned: that node provides it)", file=sys.stderr)
        return EXIT_IN_USE
    import trio

    try:
        return trio.run(_serve, config, entry.cid, lock)
    finally:
        lock.release()


def tell_running_node(running, op: str, cid: str) -> int:
    """Ask the node running on the data dir to ``provide``/``unprovide`` ``cid``; print the outcome."""
    from node.local_node import ControlError, ask

    try:
        ask(running, op, cid=cid)
    except ControlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    verb = "provides" if op == "provide" else "stopped providing"
    print(f"the running node {running.peer_id} (pid {running.pid}) {verb} {cid}", file=sys.stderr, flush=True)
    return EXIT_OK


async def _serve(config, cid, lock) -> int:
    import signal

    import trio

    from node.app import Node
    from node.control import ControlService
    from node.local_node import RunningNode
    from node.storage import StorageService

    storage = StorageService.from_config(config)
    control = ControlService()
    node = Node(config, services=[storage, control])
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            lock.describe(RunningNode(pid=os.getpid(), peer_id=node.peer_id, command="publish",
                                      multiaddrs=node.full_multiaddrs(), control=control.address, token=control.token))
            await storage.announce(cid)
            print(f"providing {cid} as {node.full_multiaddrs()[0]} (Ctrl-C to stop)", flush=True)
            async for _ in signals:
                node.stop()  # goodbye to peers; run() returns
                break
    return EXIT_OK
