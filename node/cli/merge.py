"""`python -m node merge REF REF... --name NAME`: merge peers' LoRA adapters of one base into one.

REF is an adapter directory or a CID (fetched from ``--peer`` / the DHT through
``--bootstrap``, verified block by block).  Adapters of different bases are refused.
Weights: ``--weights 0.6,0.4``, ``--query "..."`` (relevance to each adapter's card),
``--search FILE`` (LoraHub-style search on a few examples of a JSONL or task file), or
uniform.  Methods: ties (default), dare_ties, linear, dare_linear.  The result is
cached by content under ``<data dir>/merged/``; ``--publish`` adds it to the block store
and prints its CID, which ``start --adapter NAME=CID`` serves.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .storage_options import add_common, add_network, setup

if TYPE_CHECKING:
    from pathlib import Path

    from node.training.data import Example


def add_parser(sub: argparse._SubParsersAction) -> None:
    from .choices import MERGE_METHODS

    p = sub.add_parser("merge", help="merge several adapters of one base (by path or CID) into one",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("refs", nargs="+", metavar="REF", help="adapter directory or CID (at least two)")
    p.add_argument("--name", default="merged", help="name of the merged adapter")
    p.add_argument("--method", default="ties", choices=MERGE_METHODS)
    p.add_argument("--density", type=float, default=0.5, help="ties/dare: fraction of weights kept (default 0.5)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--weights", help="comma-separated, one per REF")
    how.add_argument("--query", help="weights from this query's relevance to each adapter's description and tags")
    how.add_argument("--search", metavar="FILE", help="search weights on a few examples of FILE (JSONL or task file)")
    p.add_argument("--search-split", default="dev", help="task files: split to search on (default dev)")
    p.add_argument("--search-n", type=int, default=8, help="examples to search on (default 8)")
    p.add_argument("--budget", type=int, default=12, help="merges tried by the search (default 12)")
    p.add_argument("--model", default=None, help="base model, if the adapters' cards do not name it")
    p.add_argument("--out", default=None, metavar="DIR", help="output dir (default <data dir>/merged/<key>)")
    p.add_argument("--peer", action="append", default=[], metavar="MULTIADDR", help="a provider of the CIDs")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for fetching CIDs")
    p.add_argument("--publish", action="store_true", help="add the merged adapter to the block store, print its CID")
    add_common(p)
    add_network(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from node.expert.model.loader import ModelLoadError
    from node.training.data import DataError, load_dataset
    from node.training.merging import merge_adapters

    if len(args.refs) < 2:
        print("error: merging needs at least two adapters", file=sys.stderr)
        return 2
    config = setup(args)
    if config is None:
        return 2
    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            print(f"error: --weights {args.weights!r}: expected comma-separated numbers", file=sys.stderr)
            return 2
    search: tuple[Example, ...] = ()
    if args.search:
        try:
            search = load_dataset(args.search, split=args.search_split).examples[: args.search_n]
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    try:
        resolved = resolve_refs(config, args.refs, args.peer, args.timeout)
        result = merge_adapters(
            [p for p, _ in resolved], [c for _, c in resolved], data_dir=config.data_path, name=args.name,
            method=args.method, density=args.density, weights=weights, query=args.query, search=search,
            budget=args.budget, model=args.model, out_dir=Path(args.out) if args.out else None,
            cache_dir=config.cache_path)
    except (ModelLoadError, DataError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    merge = result.card["merge"]
    print(f"merged {len(resolved)} adapters ({merge['method']}, weights {merge['weights']} from "
          f"{merge['weights_from']}{', cached' if result.cached else ''}) -> {result.path}")
    if args.publish:
        from node.storage import BlockStore
        from node.storage.importer import import_path

        store = BlockStore.for_data_dir(config.data_path)
        entry = import_path(store, result.path)
        store.pin(entry.cid, args.name)
        print(f"published {entry.cid}")
        print(f"serve it: python -m node start --adapter {args.name}={entry.cid}")
    return 0


def resolve_refs(config, refs: list[str], peers: list[str], timeout: float) -> list[tuple[Path, str | None]]:
    """``(local dir, cid or None)`` per ref; CIDs already in the local block store are exported, others fetched."""
    from pathlib import Path

    from node.expert.model.loader import ModelLoadError
    from node.storage import BlockStore, export
    from protocol import ProtocolError
    from protocol.cid import parse_cid

    store = BlockStore.for_data_dir(config.data_path)
    out: list[tuple[Path, str | None]] = []
    remote = []
    for ref in refs:
        if Path(ref).expanduser().is_dir():
            out.append((Path(ref).expanduser(), None))
            continue
        try:
            cid = parse_cid(ref)
        except ProtocolError:
            raise ModelLoadError(f"{ref!r} is neither an adapter directory nor a CID") from None
        dest = config.data_path / "content" / str(cid)
        dest.parent.mkdir(parents=True, exist_ok=True)
        out.append((dest, str(cid)))
        if store.has(cid) and not store.missing(cid):
            if not (dest / "adapter_model.safetensors").is_file():
                export(store, cid, dest)
        else:
            remote.append((cid, dest))
    if remote:
        import trio

        trio.run(_fetch_all, config, store, remote, peers, timeout)
    return out


async def _fetch_all(config, store, remote, peers: list[str], timeout: float) -> None:
    import copy
    import tempfile

    import trio

    from node.app import Node
    from node.expert.model.content import fetch_adapters
    from node.expert.model.loader import ModelLoadError
    from node.storage import StorageService

    storage = StorageService(store)
    with tempfile.TemporaryDirectory(prefix="mosaic-merge-") as ephemeral:
        node_config = copy.deepcopy(config)
        node_config.data_dir = ephemeral  # throw-away identity; blocks go to the real store
        node = Node(node_config, services=[storage])
        failure: ModelLoadError | None = None  # raised outside the nursery: not wrapped in a group
        try:
            with trio.fail_after(timeout):
                async with trio.open_nursery() as nursery:
                    await nursery.start(node.run)
                    ids = [await node.connect(addr) for addr in peers]
                    try:
                        await fetch_adapters(node, [str(cid) for cid, _ in remote], peers=ids,
                                             dests=[dest for _, dest in remote])
                    except ModelLoadError as exc:
                        failure = exc
                    nursery.cancel_scope.cancel()
        except trio.TooSlowError:
            raise ModelLoadError(f"fetching the adapters timed out after {timeout:.0f}s") from None
        except Exception as exc:  # noqa: BLE001 - DialError (in a group): one line
            raise ModelLoadError(f"cannot fetch the adapters: {type(exc).__name__}: {exc}") from None
        if failure is not None:
            raise failure
