"""Models and adapters named by CID: fetched through the node's storage, and local adapters published.

``--adapter NAME=PATH`` may name a local directory or a CID.  A CID is fetched
with the node's :class:`~node.storage.service.StorageService` (multi-provider
chunk fetch, exported to ``<data_dir>/content/<cid>``) before the model loads.
A local adapter is published (imported, pinned, provided) when the node runs
storage, so the CID in our capability record lets other peers fetch exactly
these weights (adapter merge, reproduction).  Without storage we fall back to
the sha256 of the adapter weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from protocol import ProtocolError
from protocol.cid import parse_cid

from ...logs import event, get_logger
from ..errors import WeightsUnavailable

if TYPE_CHECKING:
    from ...app import Node

log = get_logger("expert.content")


class ContentTooLarge(WeightsUnavailable):
    """Content named by CID declares more than it can be (an adapter of this base) or a quota allows."""


async def resolve_reference(node: Node, reference: str) -> tuple[str, str | None]:
    """``(local path, cid or None)`` for a path or a CID (fetched, or reused if already exported)."""
    if Path(reference).expanduser().exists():
        return reference, None
    try:
        cid = parse_cid(reference)
    except ProtocolError:
        return reference, None  # not a CID either: the loader reports the missing path clearly
    from ...storage.service import ensure_local

    event(log, "fetching_weights", cid=reference)
    try:
        path = await ensure_local(node, cid, peers=await _join(node))
    except Exception as exc:  # FetchError, StorageError (no storage service), transport errors
        raise WeightsUnavailable(f"cannot fetch {reference}: {type(exc).__name__}: {exc}") from None
    return str(path), str(cid)


async def fetch_adapters(node: Node, cids: Sequence[str], *, peers: Sequence[str] = (),
                         dests: Sequence[Path | None] | None = None, requester: str | None = None,
                         max_bytes: int | None = None) -> list[Path]:
    """Each adapter CID as a local directory, fetched through the node's storage (block by block,
    verified) from ``peers`` and DHT providers, or reused when already exported.

    ``dests``: where each export goes (default ``<data_dir>/content/<cid>``).  What ``node merge``
    and the ``merge`` strategy fetch their inputs with.  :class:`WeightsUnavailable` names the CID that
    failed; :class:`ContentTooLarge` when it declares more than ``max_bytes`` (what an adapter of the
    base can weigh, merge.adapter_size_limit) or a quota of ``requester`` (the remote peer it is for).
    """
    from ...storage.fetch import DagTooLarge
    from ...storage.service import ensure_local

    paths = []
    cap_name = None if max_bytes is None else f"{max_bytes:,} bytes an adapter of this base can weigh"
    for cid, dest in zip(cids, dests or [None] * len(cids), strict=True):
        event(log, "fetching_adapter", cid=cid)
        try:
            paths.append(await ensure_local(node, cid, dest, peers=peers, requester=requester, cap=max_bytes,
                                            cap_name=cap_name or ""))
        except DagTooLarge as exc:
            raise ContentTooLarge(f"adapter {cid} refused: {exc}") from None
        except Exception as exc:  # FetchError, StorageError, ProtocolError (a bad CID), transport errors
            raise WeightsUnavailable(f"cannot fetch adapter {cid}: {type(exc).__name__}: {exc}") from None
    return paths


async def discard_content(node: Node, cids: Sequence[str]) -> None:
    """Remove what fetching ``cids`` left in this node's data dir: their exports under
    ``<data_dir>/content`` and their blocks no pin of another content reaches (refused inputs)."""
    import shutil
    from functools import partial

    from ...storage.service import StorageService

    storage = node.service(StorageService)
    for cid in cids:
        folder = node.config.data_path / "content" / cid
        if folder.is_dir() and not folder.is_symlink():
            await trio.to_thread.run_sync(partial(shutil.rmtree, folder, ignore_errors=True))
        if storage is not None:
            try:
                root = parse_cid(cid)
            except ProtocolError:
                continue
            await trio.to_thread.run_sync(storage.store.unpin, root)
            freed = await trio.to_thread.run_sync(storage.store.discard, root)
            event(log, "content_discarded", cid=cid, freed=freed)


async def _join(node: Node) -> list[str]:
    """Dial the bootstrap peers now and return their ids as fetch candidates.

    Services start before the node bootstraps (node/app.py), so without this a
    CID-named adapter would find no connected peer and no DHT routing table.
    """
    peers: list[str] = []
    for addr in node.config.net.bootstrap:
        try:
            with trio.move_on_after(10):
                peers.append(await node.connect(addr))
        except Exception as exc:  # unreachable bootstrap peer: DHT providers may still answer
            event(log, "bootstrap_dial_failed", addr=addr, error=type(exc).__name__)
    return peers


async def publish_adapter(node: Node, path: str) -> str | None:
    """Publish a local adapter directory through the node's storage; its CID, or None without storage."""
    from ...storage.service import StorageService

    storage = node.service(StorageService)
    if storage is None:
        return None
    try:
        published = await storage.publish(path)
    except (OSError, ProtocolError) as exc:
        event(log, "adapter_publish_failed", path=path, error=f"{type(exc).__name__}: {exc}"[:160])
        return None
    return str(published.cid)
