"""`python -m node fetch CID`: download content by CID from the network into a file or directory.

Providers come from ``--peer`` (multiaddrs with ``/p2p/<id>``) and from the DHT
(reached through ``--bootstrap`` / the config).  Blocks are hash-checked, written to
the block store as they arrive and pinned; an interrupted fetch resumes.  The
content is then written to ``-o`` (default ``./<CID>``; an existing directory gets
``<dir>/<CID>`` inside it; an existing file is refused), under a temp name renamed
at the end.  Nothing that exists is ever deleted or overwritten.

The temporary node is a fetch-only client: a throw-away identity (so it can run
next to a ``start`` node sharing the data dir) that advertises nothing, so it
never shows up in other nodes' tables or as a provider after it exits.  When a
node runs on the data dir, it is asked to provide what was fetched.  Every failure
is one ``error: ...`` line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import EXIT_FAILED, EXIT_IN_USE, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from .storage_options import add_common, add_network, setup


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fetch", help="download content by CID (multi-provider, verified, resumable)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("cid")
    p.add_argument("-o", "--output", metavar="PATH",
                   help="new file/dir to write, or an existing dir to write <CID> into (default ./<CID>)")
    p.add_argument(
        "--peer", action="append", default=[], metavar="MULTIADDR", help="a provider to fetch from (repeatable)"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    p.add_argument("--max-size", type=float, default=None, metavar="MIB",
                   help="refuse content that declares more than this many MiB (default: storage.max_fetch_mib, "
                        "64 GiB); checked before anything beyond the root is fetched or written")
    p.add_argument("--max-expansion", type=float, default=None, metavar="X",
                   help="refuse content over 256 MiB that declares more than X times the bytes of its distinct "
                        "blocks (one block repeated; default: storage.max_expansion, 16)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_common(p)
    add_network(p)
    p.set_defaults(run=run)


class OutputRefused(Exception):
    """``-o`` names something that exists (and is not a directory to write into)."""


def output_path(output: str | None, cid: str) -> Path:
    """Where the content goes: never onto something that exists."""
    target = Path(output) if output else Path(cid)
    if output and target.is_dir() and not target.is_symlink():
        target = target / cid  # like cp: into the directory
    if target.exists() or target.is_symlink():
        raise OutputRefused(f"{target} already exists; remove it or pass -o with a new path or a directory")
    if not target.parent.is_dir():
        raise OutputRefused(f"{target.parent} is not a directory")
    return target


def run(args: argparse.Namespace) -> int:
    from protocol.cid import parse_cid
    from protocol.errors import ProtocolError

    try:
        cid = parse_cid(args.cid)
    except ProtocolError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    config = setup(args)
    if config is None:
        return EXIT_USAGE
    if args.max_size is not None and not 0 < args.max_size <= 2**30:
        print("error: --max-size must be a size in MiB, > 0", file=sys.stderr)
        return EXIT_USAGE
    if args.max_expansion is not None and not args.max_expansion >= 1:
        print("error: --max-expansion must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    try:
        output = output_path(args.output, str(cid))
    except OutputRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.listen:
        config.net.listen = ["/ip4/0.0.0.0/tcp/0"]
    from node.net.ports import PortInUse, check_listen_addrs

    try:
        check_listen_addrs(config.net.listen)
    except PortInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_IN_USE
    from .interrupt import run_one_shot

    try:
        return run_one_shot(_fetch, config, cid, args, output)
    except Exception as exc:  # the last resort: a user never sees a traceback from fetch
        from node.logs import get_logger

        get_logger("cli.fetch").debug("fetch failed", exc_info=True)
        print(f"error: fetch of {cid} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED


async def _fetch(config, cid, args, output: Path) -> int:
    import copy
    import tempfile

    import trio

    from node.app import Node
    from node.net.discovery import DialError, connected_peers
    from node.storage import BlockStore, FetchError, StorageError, StorageService
    from node.storage.quota import FetchQuota

    store = BlockStore.for_data_dir(config.data_path)
    limits = config.storage
    max_fetch = args.max_size if args.max_size is not None else limits.max_fetch_mib
    expansion = args.max_expansion if args.max_expansion is not None else limits.max_expansion
    storage = StorageService(store, quota=FetchQuota.from_mib(max_fetch, limits.peer_quota_mib,
                                                              limits.others_quota_mib, expansion))
    bar = None
    from node.logs import progress_wanted

    if progress_wanted(quiet=args.no_progress):  # a terminal; not a pipe or a log file
        from tqdm import tqdm

        bar = tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc=str(cid)[:16], file=sys.stderr)

    def progress(done: int, total: int | None) -> None:
        if bar is not None:
            if total and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

    error: str | None = None
    code = EXIT_FAILED
    stats = None
    with tempfile.TemporaryDirectory(prefix="mosaic-fetch-") as ephemeral:
        node_config = copy.deepcopy(config)
        node_config.data_dir = ephemeral  # throw-away identity; blocks still go to `store`
        node = Node(node_config, services=[storage], client=True)
        # Errors are caught inside the nursery: raised through it they would be an ExceptionGroup.
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            try:
                with trio.fail_after(args.timeout):
                    peers = []
                    for addr in args.peer:
                        try:
                            peers.append(await node.connect(addr))
                        except DialError as exc:
                            print(f"warning: cannot reach {addr}: {exc}", file=sys.stderr)
                    local = store.has(cid) and not await trio.to_thread.run_sync(store.missing, cid)
                    if not local and not peers:
                        asked = [*args.peer, *config.net.bootstrap]
                        if asked and not connected_peers(node.host):
                            raise _Unreachable("cannot reach any peer: " + ", ".join(asked), EXIT_UNREACHABLE)
                        if not asked and not config.net.mdns:
                            raise _Unreachable("no peer to ask: pass --peer MULTIADDR (a provider) or "
                                               "--bootstrap MULTIADDR (any node of the network)", EXIT_USAGE)
                    stats = await storage.fetch(cid, peers=peers, progress=progress)
                    await storage.export(cid, output)
            except trio.TooSlowError:
                error = f"fetch of {cid} timed out after {args.timeout:.0f}s (run again to resume)"
            except _Unreachable as exc:
                error, code = str(exc.args[0]), exc.args[1]
            except (FetchError, StorageError, OSError) as exc:
                error = str(exc) or type(exc).__name__
                if error.startswith("no providers"):
                    error += (
                        " (no reachable peer has it: check the CID, or pass --peer MULTIADDR of a node that has it)"
                    )
            finally:
                nursery.cancel_scope.cancel()
        if bar is not None:
            bar.close()
    if error is not None or stats is None:
        print(f"error: {error or 'fetch did not complete'}", file=sys.stderr)
        return code
    _tell_running_node(config.data_path, str(cid))
    mib = stats.bytes_fetched / 2**20
    rate = mib / stats.seconds if stats.seconds else 0.0
    print(f"fetched {cid} -> {output} ({mib:.1f} MiB from {len(stats.bytes_by_peer)} providers, "
          f"{stats.blocks_already_local} blocks already local, {rate:.1f} MiB/s)", flush=True)
    return EXIT_OK


class _Unreachable(Exception):
    """No peer could be asked at all: ``(message, exit code)``."""


def _tell_running_node(data_dir: Path, cid: str) -> None:
    """The fetched content is pinned in the data dir: its running node (if any) provides it."""
    from node.local_node import ControlError, ask, running_node

    running = running_node(data_dir)
    if running is not None:
        try:
            ask(running, "provide", cid=cid)
        except ControlError as exc:
            print(f"warning: {exc}", file=sys.stderr)
