"""DHT provider records for content we hold: provide, re-provide, find (de-duplicated).

py-libp2p 0.8.1 quirks handled here (research/libp2p.md B5):

- ``find_providers`` returns duplicates (20 entries for 2 providers): we keep one
  entry per peer id, merging their addresses;
- ``provide()`` is fire-and-forget and returns before remote nodes stored the
  record, and records expire: :class:`Reprovider` provides again periodically;
- lookups may hang on a dead DHT server: every call has a deadline.

Keys are the root CID's multihash (py-libp2p's ``_encode_key``), so a CIDv0 and
the CIDv1 of the same DAG find the same providers, as in Kubo.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import trio
from libp2p.peer.peerinfo import PeerInfo

from protocol.cid import CID

from ..logs import event, get_logger

if TYPE_CHECKING:
    from libp2p.kad_dht.kad_dht import KadDHT

log = get_logger("storage.providers")

PROVIDE_TIMEOUT = 10.0
FIND_TIMEOUT = 10.0
DEFAULT_REPROVIDE_INTERVAL = 600.0


async def provide(dht: KadDHT, cid: CID) -> bool:
    try:
        with trio.move_on_after(PROVIDE_TIMEOUT):
            return bool(await dht.provide(str(cid)))
    except Exception as exc:  # the DHT raises a variety of transport errors; retried later
        event(log, "provide_failed", cid=str(cid), error=f"{type(exc).__name__}: {exc}"[:160])
    return False


def dedupe_providers(infos: Iterable[PeerInfo], exclude: Iterable[str] = ()) -> list[PeerInfo]:
    """One :class:`PeerInfo` per peer id (first-seen order), addresses merged."""
    skip = set(exclude)
    merged: dict[str, PeerInfo] = {}
    for info in infos:
        key = str(info.peer_id)
        if key in skip:
            continue
        if key not in merged:
            merged[key] = PeerInfo(info.peer_id, list(info.addrs))
        else:
            have = merged[key].addrs
            have.extend(a for a in info.addrs if a not in have)
    return list(merged.values())


async def find_providers(dht: KadDHT, cid: CID, *, count: int = 20, exclude: Iterable[str] = ()) -> list[PeerInfo]:
    try:
        with trio.move_on_after(FIND_TIMEOUT):
            found = await dht.find_providers(str(cid), count)
            return dedupe_providers(found, exclude)
    except Exception as exc:
        event(log, "find_providers_failed", cid=str(cid), error=f"{type(exc).__name__}: {exc}"[:160])
    return []


class Reprovider:
    """Keeps provider records alive for ``roots`` and for whatever ``pinned()`` lists now.

    ``pinned`` is read at every sweep, not once at start: a pin added to the data dir
    by another process (``publish --offline``, ``pin``) is provided by the running
    node at the latest on the next sweep (at once when the CLI wakes it, see
    :mod:`node.control`).  Roots in ``withdrawn`` are skipped (unpinned while running).
    """

    def __init__(
        self, dht: KadDHT, interval: float = DEFAULT_REPROVIDE_INTERVAL, *, pinned: Callable[[], Iterable[CID]] = tuple
    ) -> None:
        self.dht = dht
        self.interval = interval
        self.roots: set[CID] = set()
        self.withdrawn: set[CID] = set()
        self._pinned = pinned
        self._wake = trio.Event()

    def add(self, cid: CID) -> None:
        self.roots.add(cid)
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            with trio.move_on_after(self.interval):
                await self._wake.wait()
            self._wake = trio.Event()
            pinned = await trio.to_thread.run_sync(lambda: set(self._pinned()))
            for cid in (self.roots | pinned) - self.withdrawn:
                await provide(self.dht, cid)
