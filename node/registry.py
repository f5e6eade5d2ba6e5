"""The live table of peers and their capabilities.

Records arrive from gossip, from the DHT and from the node itself; all go
through :class:`protocol.RecordBook` (signature, expiry and replay checks), so a
forged, replayed or expired record never enters the table whatever path it
took.  Entries leave when their TTL lapses (:meth:`Registry.run_expiry`), or at
once when the peer says goodbye (a signed ``withdrawn`` record, sent by a node that
stops cleanly).  The goodbye stays in the record book until its own TTL lapses, so
the peer's older records, still valid, are refused as replays meanwhile.

Tests and services await changes instead of sleeping:
``await registry.wait_for(lambda r: len(r) == 5, timeout=3)``.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import trio

from protocol import CapabilityRecord, ExpiredRecord, ProtocolError, RecordBook, SignedRecord

from .logs import event, get_logger

log = get_logger("registry")

# Weight of a new latency sample in the moving average.
_LATENCY_ALPHA = 0.3


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """One row of the table: the newest record, how it arrived, what we measured."""

    record: CapabilityRecord
    signed: SignedRecord
    source: str  # "self", "gossip", "dht" or "stream"
    received_at: float
    latency_s: float | None


class Registry:
    """Newest verified capability record per peer, with TTL expiry and change notification."""

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._book = RecordBook()
        self._signed: dict[str, SignedRecord] = {}
        self._source: dict[str, str] = {}
        self._received: dict[str, float] = {}
        self._latency: dict[str, float] = {}
        self._changed = trio.Event()
        self.version = 0
        # Rejections by reason ("BadSignature", "ExpiredRecord", ...): what hostile tests await.
        self.rejected: Counter[str] = Counter()

    # ------------------------------------------------------------------ writes

    def offer(self, signed: SignedRecord, *, source: str, from_peer: str | None = None) -> CapabilityRecord | None:
        """Verify and store ``signed``; return the record if it is new, ``None`` otherwise.

        Invalid records are counted in :attr:`rejected` and logged, never raised:
        they come from the network, and one bad record must not stop a batch.
        """
        now = self._clock()
        try:
            accepted = self._book.offer(signed, now, from_peer=from_peer)
            if accepted.record.expires_at() <= now:
                # RecordBook tolerates 30 s of clock skew past expiry; the table must not,
                # or a stopped peer's record fetched late from the DHT would come back.
                self._book.forget(accepted.record.peer_id)
                self._drop(accepted.record.peer_id)
                raise ExpiredRecord(f"record of {accepted.record.peer_id[-8:]} is past its TTL")
        except ProtocolError as exc:
            self.note_rejected(type(exc).__name__, source, str(exc))
            return None
        if not accepted.is_new:
            return None
        record = accepted.record
        if record.withdrawn:
            was_listed = record.peer_id in self._signed
            self._drop(record.peer_id)
            if was_listed:
                event(log, "peer_left", peer=record.peer_id, name=record.name, source=source)
            self._notify()
            return record
        is_new_peer = record.peer_id not in self._signed
        self._signed[record.peer_id] = signed
        self._source[record.peer_id] = source
        self._received[record.peer_id] = now
        if is_new_peer:
            event(log, "peer_added", peer=record.peer_id, name=record.name, source=source, seq=record.seq)
        self._notify()
        return record

    def note_rejected(self, reason: str, source: str, detail: str = "") -> None:
        """Count a record (or gossip batch) refused before or by :meth:`offer`."""
        self.rejected[reason] += 1
        self.rejected[f"{source}:{reason}"] += 1
        event(log, "record_rejected", source=source, reason=reason, detail=detail[:160])
        self._notify()

    def signed_records(self) -> list[SignedRecord]:
        return list(self._signed.values())

    def expire(self) -> list[str]:
        """Drop records past their TTL; return the peer ids that left."""
        gone = [p for p in self._book.expire(self._clock()) if p in self._signed]  # not goodbyes
        for peer_id in gone:
            self._drop(peer_id)
            event(log, "peer_expired", peer=peer_id)
        if gone:
            self._notify()
        return gone

    def forget(self, peer_id: str) -> None:
        self._book.forget(peer_id)
        self._drop(peer_id)
        self._notify()

    def observe_latency(self, peer_id: str, seconds: float) -> None:
        """Fold one round-trip measurement into the peer's moving average."""
        old = self._latency.get(peer_id)
        self._latency[peer_id] = seconds if old is None else old + _LATENCY_ALPHA * (seconds - old)

    def _drop(self, peer_id: str) -> None:
        for table in (self._signed, self._source, self._received):
            table.pop(peer_id, None)

    def _notify(self) -> None:
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------------ reads

    def get(self, peer_id: str) -> CapabilityRecord | None:
        record = self._book.get(peer_id)
        return None if record is None or record.withdrawn else record

    def all(self) -> list[CapabilityRecord]:
        return sorted((r for r in self._book.records() if not r.withdrawn), key=lambda r: (r.name, r.peer_id))

    def experts(self, tag: str | None = None) -> list[CapabilityRecord]:
        """Peers that serve a model (``base_model`` set), optionally only those tagged ``tag``."""
        return [r for r in self.all() if r.base_model and (tag is None or tag in r.tags)]

    def peer_ids(self) -> set[str]:
        return set(self._signed)

    def signed(self, peer_id: str) -> SignedRecord | None:
        return self._signed.get(peer_id)

    def entry(self, peer_id: str) -> PeerEntry | None:
        record = self.get(peer_id)
        if record is None:
            return None
        return PeerEntry(
            record=record,
            signed=self._signed[peer_id],
            source=self._source[peer_id],
            received_at=self._received[peer_id],
            latency_s=self._latency.get(peer_id),
        )

    def latency(self, peer_id: str) -> float | None:
        return self._latency.get(peer_id)

    def __len__(self) -> int:
        return len(self._signed)

    def __contains__(self, peer_id: object) -> bool:
        return isinstance(peer_id, str) and self.get(peer_id) is not None

    # ------------------------------------------------------------------ waiting

    async def wait_for(self, predicate: Callable[[Registry], bool], timeout: float | None = None) -> None:
        """Return once ``predicate(self)`` holds; raise ``trio.TooSlowError`` after ``timeout`` s."""
        with trio.fail_after(math.inf if timeout is None else timeout):
            while not predicate(self):
                await self._changed.wait()

    async def run_expiry(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Expire records exactly when their TTL lapses (sleeps until the next expiry or change)."""
        task_status.started()
        while True:
            self.expire()
            records = self._book.records()
            if records:
                next_expiry = min(r.expires_at() for r in records)
                delay = max(0.0, next_expiry - self._clock()) + 0.01
            else:
                delay = math.inf
            changed = self._changed
            with trio.move_on_after(delay):
                await changed.wait()
