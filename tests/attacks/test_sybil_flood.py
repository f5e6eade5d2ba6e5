"""Attack 1 (issue 12): a Sybil flood of self-signed, zero-load expert records.

One connection gossips records signed by hundreds of fresh keys, each an idle
expert.  Before the defence every node stored and relayed them, the fakes
outranked the real expert and every query failed after three dead attempts.
Now: records alone never make a peer routable (verified experts rank first),
the forwarder's budget and the registry's caps bound what the flood stores,
and the table a node hands to joiners holds only peers it verified.
"""

from __future__ import annotations

import os
from contextlib import aclosing

import trio

import protocol as p
from node.coordinator.client import ask
from node.coordinator.service import QueryService
from node.expert.serve.service import ExpertService
from node.net.gossip import NEW_RECORDS_BURST
from protocol.records import MAX_RECORD_TTL
from tests.cluster.harness import in_process_cluster

from .adversary import adversary, sybil_records

# CI's small form; benchmarks/attacks.py runs 20,000.
FLOOD = int(os.environ.get("MOSAIC_ATTACK_FLOOD", "600"))
QUESTION = (p.ChatMessage(role="user", content="Name a primary colour."),)


async def _ask(host: object, peer_id: str) -> p.QueryResult:
    request = p.QueryRequest(request_id=f"flood-{trio.current_time()}", messages=QUESTION, timeout_s=60.0,
                             sampling=p.SamplingParams(max_new_tokens=4), tags=("test",))
    with trio.fail_after(60):
        async with aclosing(ask(host, peer_id, request)) as events:
            async for event in events:
                if isinstance(event, p.QueryResult):
                    return event
    raise AssertionError("no result")


async def test_sybil_flood_does_not_take_routing(base_expert) -> None:
    with trio.fail_after(150):
        async with in_process_cluster() as cluster, adversary() as evil:
            expert = await cluster.add(0, services=[ExpertService(expert=base_expert, threads=1), QueryService()])
            coordinator = await cluster.add(1, services=[QueryService()])
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 1, timeout=15)
            for victim in (coordinator, expert):
                await evil.join_gossip(victim.full_multiaddrs()[0], victim.host.get_id())
            flood = sybil_records(FLOOD)
            await evil.gossip(flood)
            # The flood is over once the victim has refused part of it (or, undefended, stored it all).
            await coordinator.registry.wait_for(
                lambda r: r.rejected["gossip:RateLimited"] > 0 or len(r) >= FLOOD + 2, timeout=30)
            await trio.sleep(0.5)  # stragglers of the last batches

            stored = len(coordinator.registry) - 2
            assert stored <= NEW_RECORDS_BURST + 64, f"{stored} of {FLOOD} sybil records stored"
            sybils = {r.peer_id for r in coordinator.registry.all()} - {expert.peer_id, coordinator.peer_id}
            assert not sybils & coordinator.registry.verified_peers()
            # What the victim vouches for to joiners: verified peers only, no sybil.
            assert {p.decode(s.payload).peer_id for s in coordinator.registry.verified_records()} <= \
                {expert.peer_id, coordinator.peer_id}
            # TTLs are capped: a 24 h record leaves within MAX_RECORD_TTL.
            kept = next(coordinator.registry.entry(pid) for pid in sybils) if sybils else None
            if kept is not None:
                assert coordinator.registry._book.expires_at(kept.record) <= kept.record.issued_at + MAX_RECORD_TTL

            # Every query is still answered by the real expert, on the coordinator and on the expert's node.
            for node in (coordinator, expert):
                started = trio.current_time()
                result = await _ask(evil.host, node.peer_id)
                assert result.provenance[0].served_by == expert.peer_id
                assert result.text
                assert trio.current_time() - started < 30
