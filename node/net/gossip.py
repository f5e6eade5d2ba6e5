"""Capability announcements over GossipSub: batched, paced, verified before relay.

GossipSub in py-libp2p 0.8.1 drops messages silently (research/libp2p.md B3):
a 10 msg/s per-forwarder spam limit, 32-slot outbound queues and 32-slot
subscription channels.  So:

* records go out in :class:`protocol.RecordBatch` messages (several per message),
* publishes are paced (:data:`PUBLISH_PACE` between two),
* the subscription is drained by a dedicated task that never blocks on work,
* the node re-announces periodically and keeps the DHT as the source of truth.

A topic validator verifies every record *before* GossipSub relays the message,
so a forged batch is neither delivered nor forwarded (``on_reject`` counts it).
It also rate-limits records of peers we do not know yet per *forwarder* (the
authenticated connection the message came in on, not its claimed publisher:
one connection can sign batches with thousands of fresh keys), and hands the
records to the registry with that forwarder, so its per-source cap applies.
A batch over the forwarder's budget is neither stored nor relayed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import trio
from libp2p.abc import IHost
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pubsub import Pubsub

from protocol import CAPABILITIES_TOPIC, ProtocolError, RecordBatch, SignedRecord, decode, encode, verify_record

from ..logs import event, get_logger, limited_event

log = get_logger("net.gossip")

# Seconds between two publishes from this node (B3: <= 10 msg/s with spam protection).
PUBLISH_PACE = 0.2
MAX_BATCH = 64  # protocol.RecordBatch cap
# Max gossip message size we accept: 64 signed records of <= 16 KiB plus framing.
MAX_GOSSIP_MESSAGE = 1024 * 1024
# Records of not-yet-known peers one forwarder may bring: a burst, then a steady rate.
# Honest relays re-announce known peers (free); a network of 1,000 nodes with 60 s
# announcements brings ~17 new records/s only while it forms.
NEW_RECORDS_BURST = 128
NEW_RECORDS_PER_SECOND = 16.0


class _Budget:
    """A token bucket of new records per forwarder."""

    __slots__ = ("tokens", "at")

    def __init__(self, now: float) -> None:
        self.tokens = float(NEW_RECORDS_BURST)
        self.at = now

    def take(self, n: int, now: float) -> bool:
        self.tokens = min(NEW_RECORDS_BURST, self.tokens + (now - self.at) * NEW_RECORDS_PER_SECOND)
        self.at = now
        if n > self.tokens:
            return False
        self.tokens -= n
        return True


def build_pubsub(
    host: IHost, *, heartbeat_interval: int = 1, max_messages_per_second: float = 100.0
) -> tuple[GossipSub, Pubsub]:
    """GossipSub with a 1 s heartbeat (default 120 s, B4) and a spam limit sized for N announcers.

    The default 10 msg/s per forwarding peer drops relays as soon as more than
    ten peers announce in the same second (B3.1); batching + pacing keeps us far
    below the raised limit.
    """
    router = GossipSub(
        protocols=[PROTOCOL_ID_V12],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=heartbeat_interval,
        max_messages_per_topic_per_second=max_messages_per_second,
        # All test peers share 127.0.0.1: IP-diversity checks would starve the mesh.
        eclipse_protection_enabled=False,
    )
    return router, Pubsub(host, router)


def verify_batch(data: bytes, now: float | None = None) -> RecordBatch:
    """Decode a gossip payload and verify every record in it; raise ``ProtocolError`` otherwise."""
    batch = decode(data, RecordBatch, max_size=MAX_GOSSIP_MESSAGE)
    when = time.time() if now is None else now
    for signed in batch.records:
        verify_record(signed, when)
    return batch


class Announcer:
    """Publishes queued records as paced batches and feeds received ones to the registry."""

    def __init__(
        self,
        pubsub: Pubsub,
        on_record: Callable[[SignedRecord, str], object],
        on_reject: Callable[[str], object],
        *,
        known: Callable[[str], bool] = lambda peer_id: False,
        topic: str = CAPABILITIES_TOPIC,
        pace: float = PUBLISH_PACE,
    ) -> None:
        """``on_record(signed, forwarder)`` gets every record of every accepted batch (the
        registry does replay checks and per-source caps); ``on_reject`` gets the error type
        name of every rejected batch; ``known(peer_id)`` says whether a record is a refresh."""
        self.pubsub = pubsub
        self.on_record = on_record
        self.on_reject = on_reject
        self.known = known
        self.topic = topic
        self.pace = pace
        self._pending: dict[str, SignedRecord] = {}
        self._wakeup = trio.Event()
        self._budgets: dict[str, _Budget] = {}
        self.published = 0

    def enqueue(self, signed: SignedRecord) -> None:
        """Queue ``signed`` for the next batch (a newer record of the same peer replaces it)."""
        peer_id = decode(signed.payload).peer_id  # type: ignore[attr-defined]
        self._pending[peer_id] = signed
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.pubsub.set_topic_validator(self.topic, self._validate, False)
        subscription = await self.pubsub.subscribe(self.topic)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_loop, subscription)
            nursery.start_soon(self._publish_loop)
            task_status.started()

    def _validate(self, forwarder: object, message: object) -> bool:
        """GossipSub topic validator: store good batches; reject (do not deliver, do not
        relay) bad ones and those over the forwarder's budget of new records."""
        via = str(forwarder)
        try:
            batch = verify_batch(message.data)  # type: ignore[attr-defined]
        except ProtocolError as exc:
            return self._reject(via, type(exc).__name__, str(exc))
        if via != str(self.pubsub.my_id):
            new = len([s for s in batch.records if not self.known(decode(s.payload).peer_id)])  # type: ignore[attr-defined]
            now = time.monotonic()
            budget = self._budgets.get(via)
            if budget is None:
                if len(self._budgets) > 4 * NEW_RECORDS_BURST:  # forget idle forwarders
                    self._budgets = {k: b for k, b in self._budgets.items() if b.tokens < NEW_RECORDS_BURST}
                budget = self._budgets[via] = _Budget(now)
            if new and not budget.take(new, now):
                return self._reject(via, "RateLimited", f"{new} new records over the forwarder's budget")
        for signed in batch.records:
            self.on_record(signed, via)
        return True

    def _reject(self, via: str, reason: str, detail: str) -> bool:
        self.on_reject(reason)
        limited_event(log, "gossip_rejected", forwarder=via[-8:], reason=reason, detail=detail[:160])
        return False

    async def _receive_loop(self, subscription: object) -> None:
        # The validator already stored every accepted batch; keep the 32-slot channel drained.
        while True:
            await subscription.get()  # type: ignore[attr-defined]

    async def _publish_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            while self._pending:
                records = list(self._pending.values())[:MAX_BATCH]
                for signed in records:
                    self._pending.pop(decode(signed.payload).peer_id, None)  # type: ignore[attr-defined]
                try:
                    await self.pubsub.publish(self.topic, encode(RecordBatch(records=tuple(records))))
                    self.published += 1
                except Exception as exc:  # a failed publish is retried by the periodic re-announce
                    event(log, "gossip_publish_failed", error=f"{type(exc).__name__}: {exc}"[:160])
                await trio.sleep(self.pace)
