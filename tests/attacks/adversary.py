"""The adversary of tests/attacks: a raw py-libp2p host with fresh identities, loopback only.

It speaks the wire protocols directly (GossipSub, KadDHT, our framed streams)
and skips every check an honest node applies to itself: it gossips records
signed by thousands of throw-away keys, stores anything in the DHT, and serves
whatever it likes.  Victims are real Mosaic nodes (tests/cluster/harness.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
from libp2p.records.validator import Validator
from libp2p.tools.anyio_service import background_trio_service

from node.net.discovery import dial
from node.net.gossip import MAX_BATCH, build_pubsub
from node.net.host import build_host, disconnect_all, listen_multiaddrs
from node.net.keys import libp2p_key_pair
from node.net.streams import FramedStream, serve
from protocol import (
    CAPABILITIES_TOPIC,
    DHT_NAMESPACE,
    INFER_PROTOCOL,
    CapabilityRecord,
    GenerateRequest,
    GenerateResult,
    Identity,
    RecordBatch,
    SignedRecord,
    TokenChunk,
    Usage,
    encode,
    sign_record,
)
from protocol.framing import encode_varint

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


class AcceptAnything(Validator):
    def validate(self, key: str, value: bytes) -> None:
        return None

    def select(self, key: str, values: list[bytes]) -> int:
        return len(values) - 1


@dataclass
class Adversary:
    identity: Identity
    host: object
    dht: KadDHT
    pubsub: object

    @property
    def peer_id(self) -> str:
        return self.identity.peer_id

    async def join_gossip(self, victim_addr: str, victim_id: object) -> None:
        """Connect to a victim and wait until it knows we subscribe to the capability topic."""
        await dial(self.host, victim_addr)
        await self.pubsub.subscribe(CAPABILITIES_TOPIC)  # type: ignore[attr-defined]
        await self.pubsub.wait_for_subscription(victim_id, CAPABILITIES_TOPIC, timeout=10)  # type: ignore[attr-defined]

    async def gossip(self, records: Sequence[SignedRecord], *, pace: float = 0.02) -> None:
        """Publish ``records`` in full batches, paced under GossipSub's 100 msg/s spam gate."""
        for start in range(0, len(records), MAX_BATCH):
            batch = RecordBatch(records=tuple(records[start : start + MAX_BATCH]))
            await self.pubsub.publish(CAPABILITIES_TOPIC, encode(batch))  # type: ignore[attr-defined]
            await trio.sleep(pace)


@asynccontextmanager
async def adversary() -> AsyncIterator[Adversary]:
    identity = Identity.generate()
    host = build_host(libp2p_key_pair(identity), LOOPBACK)
    dht = KadDHT(host, DHTMode.SERVER)
    dht.register_validator(DHT_NAMESPACE, AcceptAnything())
    router, pubsub = build_pubsub(host)
    async with (
        host.run(listen_addrs=listen_multiaddrs(LOOPBACK)),
        background_trio_service(dht),
        background_trio_service(pubsub),
        background_trio_service(router),
    ):
        await pubsub.wait_until_ready()
        try:
            yield Adversary(identity, host, dht, pubsub)
        finally:
            await disconnect_all(host)


def sybil_records(count: int, *, name: str = "sybil", base_model: str = "SmolLM2-135M-Instruct", tags: Sequence[str] = ("test",),
                  ttl: float = 86_400.0) -> list[SignedRecord]:
    """``count`` experts with zero load and the longest TTL the protocol allows, each
    signed by its own fresh key (~0.1 ms per key): what issue 12's flood sent."""
    now = time.time()
    out = []
    for i in range(count):
        key = Identity.generate()
        record = CapabilityRecord(peer_id=key.peer_id, name=f"{name}-{i}", base_model=base_model, tags=tuple(tags),
                                  load=0.0, queue_depth=0, seq=int(now * 1000), issued_at=now, ttl=ttl)
        out.append(sign_record(record, key))
    return out


class ForgingExpert:
    """A node service that serves ``/mosaic/infer/1`` with whatever the attacker wants:
    a fixed answer, and in its result a forged ``served_by`` and ``model``."""

    def __init__(self, answer: str | None = "EVIL", *, served_by: str = "", model: str = "gpt-4o-2024-08-06",
                 base_model: str = "SmolLM2-135M-Instruct", tags: Sequence[str] = (), delay: float = 0.0,
                 load: float = 0.0, queue_depth: int = 0) -> None:
        self.answer = answer
        self.served_by = served_by
        self.model = model
        self.base_model = base_model
        self.tags = list(tags)
        self.delay = delay  # seconds before the first token (how slow it really is)
        self.load, self.queue_depth = load, queue_depth  # what its record claims
        self.prompts: list[str] = []  # what it logged: every prompt routed to it

    def record_fields(self) -> dict[str, object]:
        return {"base_model": self.base_model, "tags": self.tags, "load": self.load, "queue_depth": self.queue_depth}

    def reply(self, request: GenerateRequest) -> str:
        return self.answer or ""

    async def run(self, node: object, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def handle(stream: FramedStream) -> None:
            request = await stream.receive(GenerateRequest)
            self.prompts.append(request.prompt or " ".join(m.content for m in request.messages or ()))
            await trio.sleep(self.delay)
            text = self.reply(request)
            await stream.send(TokenChunk(request_id=request.request_id, index=0, text=text))
            await stream.send(GenerateResult(request_id=request.request_id, text=text, finish_reason="stop",
                                             usage=Usage(prompt_tokens=1, completion_tokens=1, seconds=0.01),
                                             model=self.model, served_by=self.served_by))

        serve(node.host, INFER_PROTOCOL, handle, allowlist=node.allowlist)  # type: ignore[attr-defined]
        task_status.started()
        await trio.sleep_forever()


# --------------------------------------------------------------------------- connection churn


async def connect_and_hang_up(addr: str, *, timeout: float = 10.0) -> None:
    """One fresh identity connects to ``addr`` (Noise + yamux), then closes the connection."""
    host = build_host(libp2p_key_pair(Identity.generate()), LOOPBACK)
    async with host.run(listen_addrs=listen_multiaddrs(LOOPBACK)):
        try:
            await dial(host, addr, timeout=timeout)
        finally:
            await disconnect_all(host)
            await close_listeners(host)


async def churn(addr: str, count: int, *, parallel: int = 16) -> int:
    """``count`` fresh identities connect and hang up, ``parallel`` at a time; returns how many failed."""
    failed = 0
    next_index = 0

    async def worker() -> None:
        nonlocal failed, next_index
        while next_index < count:
            next_index += 1
            try:
                await connect_and_hang_up(addr)
            except Exception:
                failed += 1

    async with trio.open_nursery() as nursery:
        for _ in range(parallel):
            nursery.start_soon(worker)
    return failed


# --------------------------------------------------------------------------- push-and-hang-up Sybils


async def push_record_and_hang_up(addr: str, *, name: str, tags: Sequence[str] = ("test",),
                                  base_model: str = "SmolLM2-135M-Instruct") -> str:
    """A fresh identity connects to ``addr``, pushes its own zero-load expert record over
    ``/mosaic/record/1`` (signed, valid, named ``name``) and hangs up; returns its peer id.
    It never listens again: any dial to it fails."""
    from node.net.exchange import fetch_table

    identity = Identity.generate()
    now = time.time()
    record = CapabilityRecord(peer_id=identity.peer_id, name=name, base_model=base_model, tags=tuple(tags),
                              load=0.0, queue_depth=0, seq=int(now * 1000), issued_at=now, ttl=3600.0,
                              multiaddrs=("/ip4/127.0.0.1/tcp/9",))
    host = build_host(libp2p_key_pair(identity), LOOPBACK)
    async with host.run(listen_addrs=listen_multiaddrs(LOOPBACK)):
        try:
            victim = await dial(host, addr)
            await fetch_table(host, victim, sign_record(record, identity))
        finally:
            await disconnect_all(host)
            await close_listeners(host)
    return identity.peer_id


async def close_listeners(host: object) -> None:
    """Stop listening: py-libp2p 0.8.1's ``host.run`` exit leaves the TCP listener open (and
    accepting), so a departed in-process identity would stay dialable, unlike a real one."""
    for listener in list(host.get_network().listeners.values()):  # type: ignore[attr-defined]
        with trio.move_on_after(2):
            await listener.close()


async def push_and_hang_up_sybils(addr: str, count: int, *, name: str, parallel: int = 4,
                                  tags: Sequence[str] = ("test",)) -> list[str]:
    """``count`` :func:`push_record_and_hang_up` Sybils named ``name``; their peer ids."""
    out: list[str] = []
    limiter = trio.CapacityLimiter(parallel)

    async def one() -> None:
        async with limiter:
            for attempt in range(3):  # a push that timed out on a loaded box never reached the node: again
                try:
                    out.append(await push_record_and_hang_up(addr, name=name, tags=tags))
                    return
                except Exception:
                    if attempt == 2:
                        raise
                    await trio.sleep(0.5)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    return out


# --------------------------------------------------------------------------- frame fuzzing


@dataclass
class FuzzReport:
    sent: int = 0
    answered: int = 0  # a reply frame came back (typed error or a real answer)
    closed: int = 0  # the node closed or reset the stream without a reply
    unopened: int = 0  # of those, the stream could not even be opened (refused, connection gone)
    silent: int = 0  # nothing within the per-frame timeout (a hang: must stay 0)


def mutate(frame: bytes, rng: random.Random) -> bytes:
    """One hostile variant of a valid frame: flipped bytes, truncation, junk, a lying length."""
    # Truncated and length-lying frames leave the server waiting for the rest until its
    # first-message deadline (10 s, correct behaviour): keep them a tenth of the mix.
    kind = rng.choices(range(5), weights=(30, 5, 5, 30, 30))[0]
    raw = bytearray(frame)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        return bytes(raw)
    if kind == 1:
        return bytes(raw[: rng.randrange(1, len(raw))])
    if kind == 2:
        return encode_varint(len(raw) + rng.randint(1, 1 << 20)) + bytes(raw[1:])  # declares more than it sends
    if kind == 3:
        return bytes(rng.randrange(256) for _ in range(rng.randint(1, 300)))
    return bytes(raw) + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))  # trailing garbage


async def fuzz_protocol(hosts: Sequence[object], peer_id: str, protocol_id: str, seeds: Sequence[bytes], count: int, *,
                        rng: random.Random, per_host: int = 2, per_frame_timeout: float = 20.0) -> FuzzReport:
    """Send ``count`` mutated frames, one per stream, from ``hosts`` (several identities, so
    per-peer caps do not serialize the run) and classify what came back."""
    from libp2p.custom_types import TProtocol
    from libp2p.peer.id import ID

    report = FuzzReport()
    frames = [mutate(rng.choice(seeds), rng) for _ in range(count)]
    limiters = [trio.CapacityLimiter(per_host) for _ in hosts]

    async def one(index: int, frame: bytes) -> None:
        host = hosts[index % len(hosts)]
        async with limiters[index % len(hosts)]:
            report.sent += 1
            try:
                stream = await host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol_id)])  # type: ignore[attr-defined]
            except Exception:
                report.closed += 1
                report.unopened += 1
                return
            try:
                with trio.move_on_after(per_frame_timeout) as scope:
                    try:
                        await stream.write(frame)
                        await stream.close()  # half-close: a truncated frame is all there is
                        data = await stream.read(65536)
                    except Exception:
                        data = b""
                if scope.cancelled_caught:
                    report.silent += 1
                elif data:
                    report.answered += 1
                else:
                    report.closed += 1
            finally:
                with trio.CancelScope(shield=True), trio.move_on_after(1):
                    try:
                        await stream.reset()
                    except Exception:
                        pass

    async with trio.open_nursery() as nursery:
        for index, frame in enumerate(frames):
            nursery.start_soon(one, index, frame)
    return report
