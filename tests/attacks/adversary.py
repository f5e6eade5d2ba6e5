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
                 base_model: str = "SmolLM2-135M-Instruct", tags: Sequence[str] = ()) -> None:
        self.answer = answer
        self.served_by = served_by
        self.model = model
        self.base_model = base_model
        self.tags = list(tags)
        self.prompts: list[str] = []  # what it logged: every prompt routed to it

    def record_fields(self) -> dict[str, object]:
        return {"base_model": self.base_model, "tags": self.tags}

    def reply(self, request: GenerateRequest) -> str:
        return self.answer or ""

    async def run(self, node: object, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def handle(stream: FramedStream) -> None:
            request = await stream.receive(GenerateRequest)
            self.prompts.append(request.prompt or " ".join(m.content for m in request.messages or ()))
            text = self.reply(request)
            await stream.send(TokenChunk(request_id=request.request_id, index=0, text=text))
            await stream.send(GenerateResult(request_id=request.request_id, text=text, finish_reason="stop",
                                             usage=Usage(prompt_tokens=1, completion_tokens=1, seconds=0.01),
                                             model=self.model, served_by=self.served_by))

        serve(node.host, INFER_PROTOCOL, handle, allowlist=node.allowlist)  # type: ignore[attr-defined]
        task_status.started()
        await trio.sleep_forever()


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
