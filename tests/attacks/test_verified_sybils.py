"""Attack 2 (issue 22): "verified" Sybils, records pushed over /mosaic/record/1 by peers that hang up.

Each Sybil is a fresh identity that connects, pushes its own valid zero-load
record named like the victim's expert, and hangs up; it never listens again.
Before the fix a pushed record counted as verified for 600 s, so 40 of them
outranked the real expert (load 0, and the name's verified claimants) and
``route``, ``vote`` and a pinned name answered 503 after three dead attempts.
Now a pushed record verifies nothing (a live connection, our own dial or a served
answer does), verified experts are asked first, and a query tries at most
``MAX_UNVERIFIED_ATTEMPTS`` unverified ones.
"""

from __future__ import annotations

from contextlib import aclosing

import trio

import protocol as p
from node.coordinator.client import ask
from node.coordinator.service import QueryService
from node.expert.serve.service import ExpertService
from tests.cluster.harness import in_process_cluster

from .adversary import push_and_hang_up_sybils

SYBILS = 40
QUESTION = (p.ChatMessage(role="user", content="Name a primary colour."),)


async def _ask(host: object, peer_id: str, **fields: object) -> p.QueryResult:
    request = p.QueryRequest(request_id=f"sybil-{trio.current_time()}", messages=QUESTION, timeout_s=30.0,
                             sampling=p.SamplingParams(max_new_tokens=4), **fields)  # type: ignore[arg-type]
    with trio.fail_after(35):
        async with aclosing(ask(host, peer_id, request)) as events:
            async for event in events:
                if isinstance(event, p.QueryResult):
                    return event
    raise AssertionError("no result")


async def test_pushed_records_do_not_verify_sybils(base_expert) -> None:
    with trio.fail_after(110):
        async with in_process_cluster() as cluster:
            victim = await cluster.add(0, services=[ExpertService(expert=base_expert, threads=1), QueryService()])
            coordinator = await cluster.add(1, services=[QueryService()])  # coordinator only, no expert
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 1, timeout=15)
            name = victim.config.name

            sybils: set[str] = set()

            async def push_to(node: object) -> None:
                sybils.update(await push_and_hang_up_sybils(node.full_multiaddrs()[0], SYBILS, name=name))  # type: ignore[attr-defined]

            async with trio.open_nursery() as nursery:  # both victims at once
                for node in (victim, coordinator):
                    nursery.start_soon(push_to, node)
            for node in (victim, coordinator):
                await node.registry.wait_for(lambda r: len(sybils & {e.peer_id for e in r.all()}) >= SYBILS,
                                             timeout=20)
                with trio.fail_after(10):  # every Sybil has hung up
                    while sybils & {pid.to_base58() for pid in node.host.get_connected_peers()}:
                        await trio.sleep(0.1)
                assert not sybils & node.registry.verified_peers(), "a pushed record made a Sybil verified"

            queries = [("route on the victim", victim, {"tags": ("test",)}),
                       ("vote on the victim", victim, {"tags": ("test",), "strategy": "vote", "params": {"k": 3}}),
                       ("route on a coordinator", coordinator, {"tags": ("test",)}),
                       ("the pinned name on a coordinator", coordinator, {"model": name}),
                       ("vote on a coordinator", coordinator, {"tags": ("test",), "strategy": "vote"})]
            for label, node, fields in queries:
                client = coordinator if node is victim else victim
                started = trio.current_time()
                try:
                    result = await _ask(client.host, node.peer_id, **fields)
                except Exception as exc:
                    raise AssertionError(f"{label}: {exc}") from exc
                assert result.text, label
                assert result.provenance[0].served_by == victim.peer_id, label
                tried = {step.peer for step in result.trace.steps} if result.trace else set()
                assert len(tried & sybils) <= 4, f"{label}: {len(tried & sybils)} unverified Sybils tried"
                assert trio.current_time() - started < 20, label
