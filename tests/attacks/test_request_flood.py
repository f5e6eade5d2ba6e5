"""Attack 10 (issue 22): a flood of valid infer requests from a few identities.

5 identities x 16 streams each keep an expert's queue full with real, valid
generations (each stream asks again as soon as it is answered).  The queue was
first come, first served: an honest request waited behind the whole flood (over
60 s in the issue) or was refused ``busy``.  Now the queue is round robin over
requesters (node/expert/serve/fair_queue.py), so the honest request waits behind at
most one queued job per requester and is served within a bound while the flood
runs.
"""

from __future__ import annotations

import collections
import time
from contextlib import aclosing
from dataclasses import dataclass

import pytest
import trio

import protocol as p
from node.expert.remote.client import generate
from node.expert.serve.fair_queue import insert_fairly, make_room_for
from node.expert.serve.service import ExpertService
from node.net.discovery import dial
from node.net.host import build_host, listen_multiaddrs
from node.net.keys import libp2p_key_pair
from tests.cluster.harness import in_process_cluster

from .adversary import LOOPBACK, close_listeners

FLOODERS = 5
STREAMS_EACH = 16
# An honest request waits behind at most one queued job per requester, then one batch: on a
# loaded 2-core box a batch of 8 x 16 tokens of SmolLM2-135M takes a few seconds.
HONEST_BOUND_S = 30.0


def _request(tag: str, tokens: int) -> p.GenerateRequest:
    return p.GenerateRequest(request_id=f"{tag}-{time.monotonic_ns()}", prompt="Count from one to twenty:",
                             sampling=p.SamplingParams(max_new_tokens=tokens, temperature=0.0), timeout_s=120.0)


async def _flood(host: object, peer_id: str, served: list[int]) -> None:
    """One stream of the flood: ask, read the answer, ask again, until cancelled."""
    while True:
        try:
            async with aclosing(generate(host, peer_id, _request("flood", 16))) as events:  # type: ignore[arg-type]
                async for message in events:
                    if isinstance(message, p.GenerateResult):
                        served[0] += 1
        except Exception:  # busy (queue full) or a dropped stream: ask again at once
            await trio.sleep(0.05)


async def _run_host(host: object, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    async with host.run(listen_addrs=listen_multiaddrs(LOOPBACK)):  # type: ignore[attr-defined]
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await close_listeners(host)


async def test_honest_request_is_served_during_a_request_flood(base_expert) -> None:
    with trio.fail_after(150):
        async with in_process_cluster() as cluster, trio.open_nursery() as nursery:
            expert_node = await cluster.add(0, services=[ExpertService(expert=base_expert, threads=1)])
            worker = expert_node.services[0].worker
            addr = expert_node.full_multiaddrs()[0]
            served = [0]
            for _ in range(FLOODERS):
                flooder = build_host(libp2p_key_pair(p.Identity.generate()), LOOPBACK)
                await nursery.start(_run_host, flooder)
                await dial(flooder, addr)
                for _ in range(STREAMS_EACH):
                    nursery.start_soon(_flood, flooder, expert_node.peer_id, served)
            with trio.fail_after(60):  # the flood holds every batch slot and most of the queue
                while worker.active < worker.max_batch or worker.queue_depth < FLOODERS * STREAMS_EACH - 24:
                    await trio.sleep(0.2)

            honest = build_host(libp2p_key_pair(p.Identity.generate()), LOOPBACK)
            await nursery.start(_run_host, honest)
            await dial(honest, addr)
            started = trio.current_time()
            result = None
            async with aclosing(generate(honest, expert_node.peer_id, _request("honest", 4))) as events:
                async for message in events:
                    if isinstance(message, p.GenerateResult):
                        result = message
            waited = trio.current_time() - started
            assert result is not None and result.text
            assert waited < HONEST_BOUND_S, f"the honest request waited {waited:.1f} s behind the flood"
            assert worker.queue_depth > 0, "the flood was not running any more"
            nursery.cancel_scope.cancel()


@dataclass
class _Job:
    requester: str
    name: str


def test_round_robin_order_and_fair_eviction() -> None:
    pending: collections.deque = collections.deque()
    for i in range(4):
        insert_fairly(pending, _Job("flooder", f"f{i}"))  # type: ignore[arg-type]
    insert_fairly(pending, _Job("other", "o0"))  # type: ignore[arg-type]
    position = insert_fairly(pending, _Job("honest", "h0"))  # type: ignore[arg-type]
    assert [j.name for j in pending] == ["f0", "o0", "h0", "f1", "f2", "f3"]
    assert position == 2
    insert_fairly(pending, _Job("honest", "h1"))  # type: ignore[arg-type]
    assert [j.name for j in pending] == ["f0", "o0", "h0", "f1", "h1", "f2", "f3"]
    # Full: a newcomer takes the place of the heaviest requester's newest job ...
    evicted = make_room_for(pending, _Job("newcomer", "n0"))  # type: ignore[arg-type]
    assert evicted is not None and evicted.name == "f3"
    # ... but the heaviest requester itself, or one as heavy, is the one refused.
    assert make_room_for(pending, _Job("flooder", "f4")) is None  # type: ignore[arg-type]
    assert make_room_for(collections.deque([_Job("a", "a0"), _Job("b", "b0")]), _Job("a", "a1")) is None  # type: ignore[arg-type]
