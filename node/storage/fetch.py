"""Fetch a whole DAG into the block store from several providers in parallel.

One worker per provider pulls CIDs from a shared queue (a faster provider simply
takes more), keeps a window of requests in flight on ``/mosaic/blocks/1`` and falls
back to bitswap for peers that do not speak it (Kubo).  Every block is hashed
against its CID before it is stored; children of dag-pb blocks join the queue as
their parents arrive.  Blocks already in the store are not fetched again, so a
re-run after an interruption resumes where it stopped.

Penalties: a provider that sends a block whose hash does not match, sends garbage,
stalls past ``block_timeout`` or drops the stream is removed from this fetch (its
in-flight CIDs go back to the queue for the others) and counted in
:class:`FetchStats`.  A provider answering "don't have" is not asked for that CID
again.  The fetch fails with :class:`FetchError` only when no remaining provider
can supply a missing block, or when the DAG itself is a bomb.

Size checks (issue 12: a 1.19 MB, 3-block DAG declaring 1.85 TiB made ``fetch``
write 2.4 GiB in 3 s): every dag-pb link declares the cumulative size of the
sub-DAG below it, so once the root arrives the whole DAG's size is known.  It
must fit :data:`MAX_DAG_BYTES` and the free disk (less :data:`DISK_RESERVE`)
before any child is asked for, and every block must then weigh exactly what its
parent declared (its own bytes plus its links' sizes).  Blocks are
hash-verified, so a mismatch is the content's fault, not the provider's: the
whole fetch stops.  (Directory entry names are checked in protocol.unixfs.)
"""

from __future__ import annotations

import shutil
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from protocol.cid import CID, DAG_PB
from protocol.errors import ProtocolError
from protocol.unixfs import child_cids

from ..logs import event, get_logger
from ..net.streams import StreamClosed
from .blocks_protocol import MAX_CIDS_PER_REQUEST, BlockStream
from .blockstore import BlockMismatch, BlockStore, StorageError

if TYPE_CHECKING:
    from libp2p.abc import IHost

    from .bitswap import Bitswap

log = get_logger("storage.fetch")

IDLE_STALL_TIMEOUT = 120.0
# Largest DAG one fetch accepts (the cumulative size its root declares): the biggest
# open-weights checkpoints are a few hundred GiB.
MAX_DAG_BYTES = 512 * 1024**3
# Disk left free after a fetch: a declared size that would eat into it is refused up front.
DISK_RESERVE = 1024**3
Progress = Callable[[int, int | None], None]  # (bytes fetched so far, expected total or None)


class FetchError(StorageError):
    """The DAG could not be completed from the given providers."""


class DagTooLarge(FetchError):
    """The DAG declares more bytes than the cap or the free disk allows."""


class DagSizeMismatch(FetchError):
    """A block does not weigh what its parent declared (a lying or corrupted DAG)."""


def block_weight(cid: CID, data: bytes) -> int:
    """What a link to this block must declare: its bytes plus the sizes its own links declare."""
    if cid.codec != DAG_PB:
        return len(data)
    from protocol.dagpb import decode_node

    return len(data) + sum(link.tsize for link in decode_node(data).links)


def check_room(declared: int, where: Path, *, cap: int = MAX_DAG_BYTES, what: str = "DAG",
               cap_name: str | None = None) -> None:
    """Raise :class:`DagTooLarge` unless ``declared`` bytes fit the cap and the disk at ``where``.

    ``cap_name`` says which limit ``cap`` is (a quota and its setting, node/storage/quota.py)."""
    if declared > cap:
        raise DagTooLarge(f"the {what} declares {declared:,} bytes, over the {cap_name or f'{cap:,}-byte cap'}")
    probe = where
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if declared > free - DISK_RESERVE:
        raise DagTooLarge(f"the {what} declares {declared:,} bytes but {probe} has {free:,} free "
                          f"(keeping {DISK_RESERVE:,} in reserve)")


@dataclass
class FetchStats:
    blocks_fetched: int = 0
    bytes_fetched: int = 0
    blocks_already_local: int = 0
    bytes_by_peer: Counter[str] = field(default_factory=Counter)
    rejected_blocks: Counter[str] = field(default_factory=Counter)  # bad hash / garbage, per peer
    dropped_peers: dict[str, str] = field(default_factory=dict)  # peer -> reason
    seconds: float = 0.0


class _Scheduler:
    """Shared want-queue; tracks which provider lacks what and who is still alive."""

    def __init__(
        self, store: BlockStore, stats: FetchStats, progress: Progress | None, max_bytes: int = MAX_DAG_BYTES,
        cap_name: str | None = None,
    ) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.cap_name = cap_name
        self.declared: dict[bytes, int] = {}  # CID digest -> size its parent's link declares
        self.stats = stats
        self.progress = progress
        self.queue: deque[CID] = deque()
        self.queued: set[bytes] = set()
        self.lacking: dict[bytes, set[str]] = {}
        self.in_flight = 0
        self.live: set[str] = set()
        self.idle: set[str] = set()
        self.expected_total: int | None = None
        self._changed = trio.Event()

    def notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()

    @property
    def done(self) -> bool:
        return not self.queue and self.in_flight == 0

    def stuck(self) -> bool:
        """Work remains but every live provider is idle (each lacks what is left)."""
        return not self.done and self.in_flight == 0 and self.live <= self.idle

    def want(self, cid: CID) -> None:
        """Queue ``cid``, or walk it locally if we already have it (resume)."""
        stack = [cid]
        while stack:
            cid = stack.pop()
            if cid.digest in self.queued:
                continue
            data = self.store.get(cid)
            if data is None:
                self.queued.add(cid.digest)
                self.queue.append(cid)
                continue
            self.queued.add(cid.digest)
            self.stats.blocks_already_local += 1
            stack.extend(self._children(cid, data))
        self.notify()

    def _children(self, cid: CID, data: bytes) -> list[CID]:
        try:
            children = child_cids(cid, data)
            weight = block_weight(cid, data)
        except ProtocolError as exc:
            raise FetchError(f"block {cid} verified but is not valid dag-pb: {exc}") from None
        declared = self.declared.get(cid.digest)
        if declared is None:  # the root: its declared total must fit before we ask for more
            self.declared[cid.digest] = weight
            if children:
                check_room(weight, self.store.root, cap=self.max_bytes, cap_name=self.cap_name)
        elif weight != declared:
            raise DagSizeMismatch(f"block {cid} weighs {weight:,} bytes but its parent declared {declared:,}")
        if children:
            from protocol.dagpb import decode_node

            for child, link in zip(children, decode_node(data).links, strict=True):
                known = self.declared.setdefault(child.digest, link.tsize)
                if known != link.tsize:
                    raise DagSizeMismatch(f"links to {child} declare both {known:,} and {link.tsize:,} bytes")
        return children

    def take(self, peer: str, n: int) -> list[CID]:
        batch: list[CID] = []
        skipped: list[CID] = []
        while self.queue and len(batch) < n:
            cid = self.queue.popleft()
            (skipped if peer in self.lacking.get(cid.digest, ()) else batch).append(cid)
        self.queue.extendleft(reversed(skipped))
        self.in_flight += len(batch)
        return batch

    def give_back(self, cids: Sequence[CID], peer: str | None = None, *, lacks: bool = False) -> None:
        for cid in reversed(cids):
            if lacks and peer is not None:
                self.lacking.setdefault(cid.digest, set()).add(peer)
            self.queue.appendleft(cid)
        self.in_flight -= len(cids)
        self.notify()

    def arrived(self, cid: CID, data: bytes, peer: str, *, stored: bool = False) -> None:
        """Verify, store and expand one block (raises BlockMismatch on a bad hash)."""
        if not stored:
            self.store.put(cid, data)  # verifies the hash first
        self.in_flight -= 1
        self.stats.blocks_fetched += 1
        self.stats.bytes_fetched += len(data)
        self.stats.bytes_by_peer[peer] += len(data)
        children = self._children(cid, data)
        if self.expected_total is None and children:
            self.expected_total = _dag_size_hint(data, cid)
        for child in children:
            self.want(child)
        if self.progress is not None:
            self.progress(self.stats.bytes_fetched, self.expected_total)
        self.notify()


def _dag_size_hint(data: bytes, cid: CID) -> int | None:
    from protocol.dagpb import decode_node

    try:
        return len(data) + sum(link.tsize for link in decode_node(data).links)
    except ProtocolError:
        return None


async def fetch_dag(
    host: IHost,
    store: BlockStore,
    root: CID,
    providers: Sequence[str],
    *,
    bitswap: Bitswap | None = None,
    window: int = 16,
    block_timeout: float = 20.0,
    progress: Progress | None = None,
    max_bytes: int = MAX_DAG_BYTES,
    cap_name: str | None = None,
) -> FetchStats:
    """Make ``root``'s whole DAG present in ``store``; returns what it took.

    ``providers`` are peer ids the host is connected to (or can dial from its
    peerstore).  ``bitswap`` (a :class:`node.storage.bitswap.Bitswap`) is used for
    providers without ``/mosaic/blocks/1``.  ``max_bytes``: the most the root may declare (a quota,
    named by ``cap_name`` in the refusal: node/storage/quota.py).
    """
    stats = FetchStats()
    sched = _Scheduler(store, stats, progress, max_bytes, cap_name)
    started = trio.current_time()
    sched.want(root)
    if sched.done:
        return stats
    peers = list(dict.fromkeys(p for p in providers if p != str(host.get_id())))
    if not peers:
        raise FetchError(f"no providers for {root}")
    sched.live.update(peers)

    async def run_provider(peer: str) -> None:
        try:
            try:
                stream = await BlockStream.open(host, peer)
            except StreamClosed:
                if bitswap is None:
                    raise
                await _bitswap_worker(bitswap, peer, sched, block_timeout)
            else:
                try:
                    await _blocks_worker(stream, sched, window, block_timeout)
                finally:
                    with trio.CancelScope(shield=True):
                        await stream.aclose()
        except BlockMismatch as exc:
            stats.rejected_blocks[peer] += 1
            _drop(peer, f"bad block: {exc}")
        except ProtocolError as exc:
            stats.rejected_blocks[peer] += 1
            _drop(peer, f"protocol error: {type(exc).__name__}: {exc}")
        except (StreamClosed, trio.TooSlowError) as exc:
            _drop(peer, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        except FetchError as exc:  # the DAG itself is bad (a bomb): no provider can fix it
            fatal_box.append(exc)
            nursery.cancel_scope.cancel()

    def _drop(peer: str, reason: str) -> None:
        stats.dropped_peers[peer] = reason[:300]
        sched.live.discard(peer)
        event(log, "provider_dropped", peer=peer, reason=reason[:200], root=str(root))
        sched.notify()

    fatal_box: list[FetchError] = []
    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(run_provider, peer)
    stats.seconds = trio.current_time() - started
    if fatal_box:
        event(log, "dag_refused", root=str(root), reason=str(fatal_box[0])[:200])
        raise fatal_box[0]
    if not sched.done:
        reasons = "; ".join(f"{p[-8:]}: {r}" for p, r in stats.dropped_peers.items()) or "providers lack blocks"
        raise FetchError(f"could not complete {root}: {len(sched.queue)} blocks missing ({reasons})")
    event(log, "dag_fetched", root=str(root), blocks=stats.blocks_fetched, bytes=stats.bytes_fetched,
          local=stats.blocks_already_local, seconds=f"{stats.seconds:.2f}", providers=len(peers))
    return stats


async def _wait_for_work(sched: _Scheduler, peer: str) -> bool:
    """Block until there is something to do; False when this worker should stop."""
    sched.idle.add(peer)
    try:
        while True:
            if sched.done or peer not in sched.live or sched.stuck():
                sched.notify()  # let the other idle workers notice too
                return False
            if any(peer not in sched.lacking.get(c.digest, ()) for c in sched.queue):
                return True
            # Safety net: other workers' blocks time out after block_timeout, so nothing
            # changing for much longer means a bug, and a clear FetchError beats a hang.
            with trio.move_on_after(IDLE_STALL_TIMEOUT) as stall:
                await sched.wait_changed()
            if stall.cancelled_caught:
                event(log, "fetch_stalled", peer=peer, queued=len(sched.queue), in_flight=sched.in_flight)
                return False
    finally:
        sched.idle.discard(peer)


async def _blocks_worker(stream: BlockStream, sched: _Scheduler, window: int, block_timeout: float) -> None:
    peer = stream.peer_id
    outstanding: deque[CID] = deque()
    refill_at = max(1, window // 2)
    try:
        while True:
            if len(outstanding) <= refill_at:
                batch = sched.take(peer, min(window - len(outstanding), MAX_CIDS_PER_REQUEST))
                if batch:
                    outstanding.extend(batch)  # before the write: a failed write gives them back
                    await stream.request(batch)
            if not outstanding:
                if not await _wait_for_work(sched, peer):
                    return
                continue
            with trio.fail_after(block_timeout):
                data = await stream.receive()
            cid = outstanding[0]  # stays outstanding (given back on any failure) until stored
            if data is None:
                outstanding.popleft()
                sched.give_back([cid], peer, lacks=True)
                continue
            # Hashing and the file write release the GIL: in a thread they overlap with
            # the muxer receiving the next blocks (measured: ~25% of the fetch's CPU).
            # A cancellation arriving here must not lose the CID (it would stay counted in
            # flight forever and the fetch would never finish).
            await trio.to_thread.run_sync(sched.store.put, cid, data)  # BlockMismatch on a bad hash
            outstanding.popleft()
            sched.arrived(cid, data, peer, stored=True)
    finally:
        if outstanding:
            sched.give_back(list(outstanding))


async def _bitswap_worker(bitswap: Bitswap, peer: str, sched: _Scheduler, block_timeout: float) -> None:
    """Fetch through bitswap (for Kubo peers); blocks land in the store via the adapter."""
    while True:
        batch = sched.take(peer, 32)
        if not batch:
            if not await _wait_for_work(sched, peer):
                return
            continue
        try:
            got = await bitswap.get_blocks(batch, peer, timeout=block_timeout)
        except BaseException:
            sched.give_back(batch)
            raise
        missing = []
        for cid in batch:
            data = got.get(cid.digest)
            if data is None:
                missing.append(cid)
            else:
                sched.arrived(cid, data, peer, stored=True)
        if missing:
            sched.give_back(missing, peer, lacks=True)
