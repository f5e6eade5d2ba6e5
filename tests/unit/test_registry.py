"""Registry: verified records only, TTL expiry, queries, change notification."""

from __future__ import annotations

import time

import trio

from node.registry import Registry
from protocol import CapabilityRecord, Identity, SignedRecord, sign_record


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _signed(identity: Identity, now: float, *, seq: int | None = None, ttl: float = 10.0, **fields: object) -> SignedRecord:
    record = CapabilityRecord(peer_id=identity.peer_id, name=str(fields.pop("name", "n")), seq=seq if seq is not None else int(now * 1000),
                              issued_at=now, ttl=ttl, **fields)
    return sign_record(record, identity)


def test_queries_and_expiry() -> None:
    clock = Clock()
    registry = Registry(clock=clock)
    a, b = Identity.generate(), Identity.generate()
    assert registry.offer(_signed(a, clock.now, name="a", tags=("math",), base_model="smol"), source="gossip") is not None
    assert registry.offer(_signed(b, clock.now, name="b", ttl=20.0), source="dht") is not None
    assert [r.name for r in registry.all()] == ["a", "b"]
    assert [r.name for r in registry.experts()] == ["a"]  # b serves no model
    assert [r.name for r in registry.experts(tag="math")] == ["a"] and registry.experts(tag="code") == []
    assert registry.get(b.peer_id).name == "b" and registry.entry(b.peer_id).source == "dht"
    clock.now += 15
    assert registry.expire() == [a.peer_id]
    assert a.peer_id not in registry and len(registry) == 1


def test_rejects_forged_replayed_and_expired() -> None:
    clock = Clock()
    registry = Registry(clock=clock)
    a, mallory = Identity.generate(), Identity.generate()
    newer = _signed(a, clock.now, seq=2)
    older = _signed(a, clock.now, seq=1)
    assert registry.offer(newer, source="gossip") is not None
    assert registry.offer(newer, source="gossip") is None  # duplicate: not new, not an error
    assert registry.offer(older, source="gossip") is None
    forged = SignedRecord(payload=newer.payload, signature=mallory.sign(b"x" * 10))
    assert registry.offer(forged, source="dht") is None
    # Past its TTL but within RecordBook's 30 s skew allowance: still refused by the table.
    stale = _signed(mallory, clock.now - 12, ttl=10.0)
    assert registry.offer(stale, source="dht") is None
    assert registry.rejected["gossip:ReplayedRecord"] == 1
    assert registry.rejected["dht:BadSignature"] == 1
    assert registry.rejected["dht:ExpiredRecord"] == 1
    assert registry.peer_ids() == {a.peer_id}


def test_direct_stream_records_must_come_from_their_issuer() -> None:
    clock = Clock()
    registry = Registry(clock=clock)
    a, b = Identity.generate(), Identity.generate()
    assert registry.offer(_signed(a, clock.now), source="stream", from_peer=b.peer_id) is None
    assert registry.offer(_signed(a, clock.now), source="stream", from_peer=a.peer_id) is not None


def test_latency_moving_average() -> None:
    registry = Registry()
    registry.observe_latency("p", 0.1)
    registry.observe_latency("p", 0.2)
    assert 0.1 < registry.latency("p") < 0.2 and registry.latency("q") is None


async def test_wait_for_wakes_on_change_and_times_out() -> None:
    registry = Registry()
    a = Identity.generate()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(registry.wait_for, lambda r: a.peer_id in r, 5)
        await trio.sleep(0)
        registry.offer(_signed(a, registry._clock()), source="gossip")
    with trio.fail_after(2):
        try:
            await registry.wait_for(lambda r: len(r) == 2, timeout=0.05)
        except trio.TooSlowError:
            pass
        else:
            raise AssertionError("wait_for should have timed out")


async def test_run_expiry_drops_records_when_their_ttl_lapses() -> None:
    registry = Registry()
    a = Identity.generate()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(registry.run_expiry)
            registry.offer(_signed(a, time.time(), ttl=0.3), source="gossip")
            started = time.monotonic()
            await registry.wait_for(lambda r: a.peer_id not in r)
            assert 0.2 <= time.monotonic() - started <= 1.0
            nursery.cancel_scope.cancel()
