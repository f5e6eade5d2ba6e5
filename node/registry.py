"""The live table of peers and their capabilities.

Records arrive from gossip, from the DHT and from the node itself; all go
through :class:`protocol.RecordBook` (signature, expiry and replay checks), so a
forged, replayed or expired record never enters the table whatever path it
took.  Entries leave when their TTL lapses (:meth:`Registry.run_expiry`) -- no later
than :data:`protocol.records.MAX_RECORD_TTL` after they were issued -- or at
once when the peer says goodbye (a signed ``withdrawn`` record, sent by a node that
stops cleanly).  The goodbye stays in the record book until its own TTL lapses, so
the peer's older records, still valid, are refused as replays meanwhile.

A record proves only that someone holds a key: keys are free, so records alone
must never make a peer routable (issue 12, the Sybil flood: 2,000 self-signed
zero-load experts outranked every real one).  The registry therefore tracks
which peers this node *verified* -- a live connection, a record exchange over a
connection this node dialled, or a recent successful answer
(:meth:`Registry.verified_peers`); a record pushed to us and a hang-up verify
nothing (issue 22) -- and bounds
what unverified records can cost: at most :data:`MAX_RECORDS` entries, at most
:data:`MAX_PER_SOURCE` learned through one relaying peer, and when the table is
full a newcomer can only displace an entry with a weaker claim (unverified and
younger), so verified, long-lived peers are never evicted by a flood.

Tests and services await changes instead of sleeping:
``await registry.wait_for(lambda r: len(r) == 5, timeout=3)``.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from protocol import CapabilityRecord, ExpiredRecord, ProtocolError, RecordBook, SignedRecord, decode
from protocol.records import MAX_RECORD_TTL

from .logs import event, get_logger, limited_event

log = get_logger("registry")

# Weight of a new latency sample in the moving average.
_LATENCY_ALPHA = 0.3
# Entries in the table, all sources together (a 20,000-record flood made /status 7.5 MiB).
MAX_RECORDS = 2048
# Entries first learned through one relaying peer (gossip forwarder or exchange partner).
MAX_PER_SOURCE = 256
# Seconds a dialled exchange or a served answer keeps a peer verified without a live connection.
VERIFIED_FOR = 600.0


@dataclass(frozen=True, slots=True)
class PeerEntry:
    """One row of the table: the newest record, how it arrived, what we measured."""

    record: CapabilityRecord
    signed: SignedRecord
    source: str  # "self", "gossip", "dht" or "stream"
    received_at: float
    latency_s: float | None
    first_seen: float = 0.0
    verified: bool = False


class Registry:
    """Newest verified capability record per peer, with TTL expiry and change notification."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        connected: Callable[[], set[str]] = set,
        max_records: int = MAX_RECORDS,
        max_per_source: int = MAX_PER_SOURCE,
        trusted: Iterable[str] = (),
    ) -> None:
        """``connected`` returns the peer ids this node holds a live (authenticated) connection to;
        a non-empty ``trusted`` (a private swarm) refuses every other peer's record."""
        self._clock = clock
        self._connected = connected
        self.max_records = max_records
        self.max_per_source = max_per_source
        self._book = RecordBook(max_ttl=MAX_RECORD_TTL)
        self._signed: dict[str, SignedRecord] = {}
        self._source: dict[str, str] = {}
        self._received: dict[str, float] = {}
        self._latency: dict[str, float] = {}
        self._first_seen: dict[str, float] = {}
        self._via: dict[str, str] = {}  # peer id -> the peer it was first learned through
        self._per_via: Counter[str] = Counter()
        self._reached: dict[str, float] = {}  # peer id -> last time we verified it is reachable
        self._self_id: str | None = None
        self._trusted = frozenset(trusted)
        self._changed = trio.Event()
        self.version = 0
        # Rejections by reason ("BadSignature", "ExpiredRecord", ...): what hostile tests await.
        self.rejected: Counter[str] = Counter()

    # ------------------------------------------------------------------ writes

    def offer(
        self, signed: SignedRecord, *, source: str, from_peer: str | None = None, via: str | None = None
    ) -> CapabilityRecord | None:
        """Verify and store ``signed``; return the record if it is new, ``None`` otherwise.

        ``from_peer``: the authenticated stream peer that sent its *own* record
        (it must be the issuer, and it is verified by sending it).  ``via``: the
        authenticated peer that relayed it (gossip forwarder, exchange partner),
        charged against :data:`MAX_PER_SOURCE`.

        Invalid records are counted in :attr:`rejected` and logged, never raised:
        they come from the network, and one bad record must not stop a batch.
        """
        now = self._clock()
        try:
            peer_id = _issuer(signed)
            if self._trusted and source != "self" and peer_id not in self._trusted:
                self.note_rejected("NotTrusted", source, f"{str(peer_id)[-8:]} is not in this private swarm")
                return None
            if (
                peer_id is not None
                and peer_id not in self._signed
                and not self._admit(peer_id, source, from_peer, via, now)
            ):
                return None
            accepted = self._book.offer(signed, now, from_peer=from_peer)
            if self._book.expires_at(accepted.record) <= now:
                # RecordBook tolerates 30 s of clock skew past expiry; the table must not,
                # or a stopped peer's record fetched late from the DHT would come back.
                self._book.forget(accepted.record.peer_id)
                self._drop(accepted.record.peer_id)
                raise ExpiredRecord(f"record of {accepted.record.peer_id[-8:]} is past its TTL")
        except ProtocolError as exc:
            self.note_rejected(type(exc).__name__, source, str(exc))
            return None
        # A pushed record (``from_peer``) proves a key and a connection that may already be gone,
        # not that the peer can be reached: only a live connection, a dial of ours that reached
        # it, or an answer it served verify it (issue 22, attack 2: "verified" Sybils).
        if source == "self":
            self._self_id = accepted.record.peer_id
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
            self._first_seen[record.peer_id] = now
            charged = from_peer or via or source
            self._via[record.peer_id] = charged
            self._per_via[charged] += 1
            event(log, "peer_added", peer=record.peer_id, name=record.name, source=source, seq=record.seq)
        self._notify()
        return record

    def _admit(self, peer_id: str, source: str, from_peer: str | None, via: str | None, now: float) -> bool:
        """Room for a new peer?  Per-source cap first, then the total cap with eviction."""
        charged = from_peer or via or source
        if source != "self" and from_peer is None and self._per_via[charged] >= self.max_per_source:
            self.note_rejected(
                "SourceCapReached", source, f"{charged[-8:]} already brought {self.max_per_source} peers"
            )
            return False
        if len(self._signed) < self.max_records:
            return True
        newcomer_verified = source == "self" or from_peer == peer_id or peer_id in self._connected()
        if not newcomer_verified:
            # An unverified newcomer is the youngest possible entry: it never outranks anyone.
            self.note_rejected("RegistryFull", source, f"table holds {self.max_records} peers")
            return False
        verified = self.verified_peers()
        unverified = [p for p in self._signed if p not in verified]
        if not unverified:
            self.note_rejected("RegistryFull", source, "every entry is verified")
            return False
        victim = max(unverified, key=lambda p: self._first_seen.get(p, 0.0))  # the youngest
        event(log, "peer_evicted", peer=victim, by=peer_id[-8:])
        self._book.forget(victim)
        self._drop(victim)
        return True

    def mark_reachable(self, peer_id: str) -> None:
        """We reached ``peer_id`` ourselves: it answered a call, or we dialled it and exchanged records."""
        self._reached[peer_id] = self._clock()

    def verified_peers(self) -> set[str]:
        """Peers whose reachability this node verified: itself, live connections, recent contact."""
        cutoff = self._clock() - VERIFIED_FOR
        stale = [p for p, t in self._reached.items() if t < cutoff]
        for peer_id in stale:
            del self._reached[peer_id]
        out = set(self._reached) | (self._connected() & set(self._signed))
        if self._self_id is not None:
            out.add(self._self_id)
        return out

    def is_verified(self, peer_id: str) -> bool:
        return peer_id in self.verified_peers()

    def note_rejected(self, reason: str, source: str, detail: str = "") -> None:
        """Count a record (or gossip batch) refused before or by :meth:`offer`."""
        self.rejected[reason] += 1
        self.rejected[f"{source}:{reason}"] += 1
        # Rate-limited: a flood of bad records must not become a flood of log lines.
        limited_event(log, "record_rejected", source=source, reason=reason, detail=detail[:160])
        self._notify()

    def signed_records(self) -> list[SignedRecord]:
        return list(self._signed.values())

    def verified_records(self) -> list[SignedRecord]:
        """Records of verified peers only: what we vouch for when another node asks our table."""
        verified = self.verified_peers()
        return [s for p, s in self._signed.items() if p in verified]

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
        for table in (self._signed, self._source, self._received, self._first_seen):
            table.pop(peer_id, None)
        charged = self._via.pop(peer_id, None)
        if charged is not None:
            self._per_via[charged] -= 1
            if self._per_via[charged] <= 0:
                del self._per_via[charged]

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
            first_seen=self._first_seen.get(peer_id, self._received[peer_id]),
            verified=self.is_verified(peer_id),
        )

    def first_seen(self, peer_id: str) -> float | None:
        return self._first_seen.get(peer_id)

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
                next_expiry = min(self._book.expires_at(r) for r in records)
                delay = max(0.0, next_expiry - self._clock()) + 0.01
            else:
                delay = math.inf
            changed = self._changed
            with trio.move_on_after(delay):
                await changed.wait()


def _issuer(signed: SignedRecord) -> str | None:
    """The peer id a record claims, before verification (``None``: let the book reject it)."""
    try:
        record = decode(signed.payload, CapabilityRecord)
    except ProtocolError:
        return None
    return record.peer_id
