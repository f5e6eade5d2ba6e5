"""The storage service of a node: serve, provide, publish and fetch content by CID.

Task tree (inside the node's nursery)::

    StorageService.run
    ├── BlockServer          /mosaic/blocks/1 handler (fast path between Mosaic nodes)
    ├── Bitswap              /ipfs/bitswap/1.x handlers, Kubo reply fix (interop path)
    └── Reprovider.run       provide every pinned root now and every reprovide_interval
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from libp2p.peer.peerinfo import PeerInfo

from protocol.cid import CID, parse_cid
from protocol.errors import ProtocolError
from protocol.unixfs import AddOptions, Entry

from ..logs import event, get_logger
from .bitswap import Bitswap
from .blocks_protocol import BlockServer
from .blockstore import BlockStore, StorageError
from .exporter import content_size, export
from .fetch import DagSizeMismatch, DagTooLarge, FetchError, FetchStats, Progress, fetch_dag
from .importer import import_path
from .providers import DEFAULT_REPROVIDE_INTERVAL, Reprovider, find_providers, provide
from .quota import Allowance, FetchQuota
from .upload_limit import UploadLimiter

if TYPE_CHECKING:
    from ..app import Node
    from ..config import NodeConfig

log = get_logger("storage")

CONNECT_TIMEOUT = 10.0
DISCOVERY_TIMEOUT = 30.0
FIND_ONCE_TIMEOUT = 10.0
_MARKER = ".mosaic-cid"


@dataclass(frozen=True)
class Published:
    cid: CID
    size: int  # file bytes
    dag_size: int  # bytes of all blocks


class StorageService:
    """Implements :class:`node.app.Service`; also usable by CLI commands and other services."""

    def __init__(
        self,
        store: BlockStore,
        *,
        reprovide_interval: float = DEFAULT_REPROVIDE_INTERVAL,
        upload_limit_mib: float | None = None,
        quota: FetchQuota | None = None,
    ) -> None:
        self.store = store
        self.quota = quota or FetchQuota()  # per fetch, per requester, for others (quota.py)
        rate = upload_limit_mib * 1024 * 1024 if upload_limit_mib is not None else None
        self.server = BlockServer(store, upload_limit=UploadLimiter(rate))
        self.reprovide_interval = reprovide_interval
        self.node: Node | None = None
        self.bitswap: Bitswap | None = None
        self.reprovider: Reprovider | None = None
        self._started = trio.Event()
        self.bytes_fetched = 0  # block bytes fetched from peers, all fetches (/metrics)

    @classmethod
    def from_config(cls, config: NodeConfig) -> StorageService:
        storage = config.storage
        return cls(
            BlockStore.for_data_dir(config.data_path),
            upload_limit_mib=storage.upload_limit_mib,
            quota=FetchQuota.from_mib(storage.max_fetch_mib, storage.peer_quota_mib, storage.others_quota_mib,
                                      storage.max_expansion),
        )

    def record_fields(self) -> dict[str, object]:
        # Model and adapter CIDs travel in the expert's fields (base_model_cid, AdapterInfo.cid).
        return {}

    async def run(self, node: Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.node = node
        self.server.register(node.host)
        async with trio.open_nursery() as nursery:
            self.bitswap = Bitswap(node.host, self.store)
            await self.bitswap.start(nursery)
            if node.advertises:  # a fetch-only client provides nothing (it exits soon)
                self.reprovider = Reprovider(node.dht, self.reprovide_interval, pinned=self._pinned_roots)
                await nursery.start(self.reprovider.run)
            self._started.set()
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await self.bitswap.stop()

    def _pinned_roots(self) -> list[CID]:
        """Pinned roots as the store holds them *now* (other processes pin into it too)."""
        return [parse_cid(pin.cid) for pin in self.store.pins()]

    # ------------------------------------------------------------------ publish

    async def publish(
        self, path: str | os.PathLike[str], options: AddOptions = AddOptions(), *, announce: bool = True
    ) -> Published:
        """Import ``path`` (file or directory) into the store, pin it and provide it."""
        entry: Entry = await trio.to_thread.run_sync(import_path, self.store, Path(path), options)
        await trio.to_thread.run_sync(self.store.pin, entry.cid, Path(path).name)
        if announce:
            await self.announce(entry.cid)
        event(log, "published", cid=str(entry.cid), bytes=entry.filesize, path=str(path))
        return Published(entry.cid, entry.filesize, entry.tsize)

    async def announce(self, cid: CID) -> None:
        """Provide ``cid`` now and keep providing it (no-op on a fetch-only client)."""
        if self.node is None or not self.node.advertises:
            return
        if self.reprovider is not None:
            self.reprovider.roots.add(cid)
            self.reprovider.withdrawn.discard(cid)
        await provide(self.node.dht, cid)

    def stop_providing(self, cid: CID) -> None:
        """Stop re-providing ``cid`` (unpinned); records already in the DHT expire on their own."""
        if self.reprovider is not None:
            self.reprovider.roots.discard(cid)
            self.reprovider.withdrawn.add(cid)

    # ------------------------------------------------------------------ fetch

    async def connect_providers(self, infos: Iterable[PeerInfo]) -> list[str]:
        """Dial providers (in parallel, each bounded); returns the peer ids reached."""
        host = self.node.host  # type: ignore[union-attr]
        reached: list[str] = []

        async def one(info: PeerInfo) -> None:
            with trio.move_on_after(CONNECT_TIMEOUT):
                try:
                    await host.connect(info)
                    reached.append(str(info.peer_id))
                except Exception as exc:  # libp2p raises many dial error types
                    event(log, "provider_unreachable", peer=str(info.peer_id), error=type(exc).__name__)

        async with trio.open_nursery() as nursery:
            for info in infos:
                nursery.start_soon(one, info)
        return reached

    async def fetch(
        self,
        cid: CID | str,
        *,
        peers: Iterable[str] = (),
        progress: Progress | None = None,
        pin: bool = True,
        window: int = 16,
        allowance: Allowance | None = None,
        requester: str | None = None,
    ) -> FetchStats:
        """Make the whole DAG of ``cid`` local: from ``peers`` (ids of connected peers) and
        from DHT providers; pin it and provide it ourselves afterwards.

        The root's declared size must fit ``allowance`` (default: the quota for ``requester``,
        the remote peer this fetch is for, None for this node's own user).  A DAG refused as too
        large, or any failed fetch for a remote requester, leaves none of its blocks behind.
        """
        root = parse_cid(cid) if isinstance(cid, str) else cid
        node = self.node
        if node is None:
            raise StorageError("the storage service is not running")
        allowance = allowance or self.quota.allowance(requester)
        candidates = list(peers)
        if self.store.missing(root):
            candidates += await self._discover(root, exclude=[node.peer_id, *candidates], patient=not candidates)
        try:
            stats = await fetch_dag(node.host, self.store, root, candidates, bitswap=self.bitswap, progress=progress,
                                    window=window, max_bytes=allowance.bytes, cap_name=allowance.name)
        except FetchError as exc:
            if isinstance(exc, (DagTooLarge, DagSizeMismatch)) or requester is not None:
                freed = await trio.to_thread.run_sync(self.store.discard, root)
                event(log, "fetch_refused", cid=str(root), requester=requester or "", freed=freed,
                      reason=str(exc)[:200])
            raise
        self.bytes_fetched += stats.bytes_fetched
        if pin:
            await trio.to_thread.run_sync(self.store.pin, root)
            await self.announce(root)
        return stats

    async def _discover(self, root: CID, *, exclude: list[str], patient: bool) -> list[str]:
        """Providers from the DHT, connected.  With no other candidate, keep asking until
        ``DISCOVERY_TIMEOUT``: ``provide()`` returns before remote nodes store the record
        (research/libp2p.md B5) and a node that just started may still be bootstrapping."""
        delay = 0.25
        with trio.move_on_after(DISCOVERY_TIMEOUT if patient else FIND_ONCE_TIMEOUT):
            while True:
                found = await find_providers(self.node.dht, root, exclude=exclude)  # type: ignore[union-attr]
                reached = await self.connect_providers(found)
                if reached or not patient:
                    return reached
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)
        return []

    async def export(self, cid: CID | str, dest: str | os.PathLike[str], *, allowance: Allowance | None = None,
                     requester: str | None = None) -> Path:
        """Write the content of ``cid`` to ``dest``; what it declares must fit ``allowance`` (default: the
        quota for ``requester``) and the disk."""
        root = parse_cid(cid) if isinstance(cid, str) else cid
        allowance = allowance or self.quota.allowance(requester)
        return await trio.to_thread.run_sync(
            lambda: export(self.store, root, Path(dest), cap=allowance.bytes, cap_name=allowance.name,
                           max_expansion=self.quota.max_expansion))


async def ensure_local(
    node: Node, cid: CID | str, dest_dir: str | os.PathLike[str] | None = None, *, peers: Iterable[str] = (),
    requester: str | None = None, cap: int | None = None, cap_name: str = "",
) -> Path:
    """Return a local path holding the content of ``cid``, fetching what is missing.

    A directory DAG (a model or adapter dir) is exported *as* ``dest_dir``; a single
    file is exported to ``dest_dir/<cid>``.  Default ``dest_dir``:
    ``<data_dir>/content/<cid>``.  Repeated calls are cheap: a marker file records
    which CID an export holds.  Raises :class:`FetchError` if no provider can supply
    it, :class:`protocol.ProtocolError` for a malformed CID.

    ``requester``: the remote peer this content is fetched for (its quota is charged, quota.py);
    ``cap``: what the content can weigh at most (e.g. an adapter of this base), named ``cap_name``.
    Refused content leaves no blocks and no partial export behind.
    """
    root = parse_cid(cid) if isinstance(cid, str) else cid
    service = node.service(StorageService)
    if service is None:
        raise StorageError("this node runs no StorageService (add it to its services)")
    await service._started.wait()
    own = dest_dir is None  # our own content dir: an unfinished export there may be replaced
    dest = Path(dest_dir) if dest_dir is not None else node.config.data_path / "content" / str(root)
    marker = dest / _MARKER
    if marker.is_file() and marker.read_text().strip() == str(root):
        return _content_path(service.store, root, dest)
    allowance = service.quota.allowance(requester, cap=cap, cap_name=cap_name)
    stats = await service.fetch(root, peers=peers, allowance=allowance, requester=requester)
    out = _content_path(service.store, root, dest)
    if own and (out.exists() or out.is_symlink()):  # no marker: an export that was interrupted
        await trio.to_thread.run_sync(_remove, out)
    (dest if out != dest else dest.parent).mkdir(parents=True, exist_ok=True)
    try:
        await service.export(root, out, allowance=allowance)
    except DagTooLarge:
        if requester is not None:  # fetched for someone else and refused: keep nothing of it
            await trio.to_thread.run_sync(service.store.unpin, root)
            await trio.to_thread.run_sync(service.store.discard, root)
        raise
    written = await trio.to_thread.run_sync(content_size, service.store, root)
    service.quota.charge(requester, max(written, stats.bytes_fetched))
    marker.write_text(str(root))
    event(log, "content_ready", cid=str(root), path=str(out))
    return out


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _content_path(store: BlockStore, root: CID, dest: Path) -> Path:
    from protocol.unixfs import read_block

    try:
        kind = read_block(root, store.require(root)).kind
    except ProtocolError as exc:
        raise FetchError(f"{root} is not UnixFS content: {exc}") from None
    return dest if kind == "directory" else dest / str(root)
