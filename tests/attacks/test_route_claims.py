"""Attack 7 (issue 22): self-reported load captures ``route``; a squatter takes a pinned name.

An honest expert says it is busy (load 0.8, three queued) and answers in 0.2 s;
an attacker claims load 0 and an empty queue, and answers in 4 s.  Routing
used the claims, so ``route`` went to the attacker 6 of 6 times; and the
attacker, advertising the honest expert's name from a node of its own, got the
pinned name too (both claimants verified: live connections).  Now claims do not
rank (measured time to first token does; an unmeasured expert counts as
``UNMEASURED_LATENCY_S``) and a shared name goes first to the claimants that
served this coordinator.
"""

from __future__ import annotations

from contextlib import aclosing

import trio

import protocol as p
from node.coordinator.client import ask
from node.coordinator.service import QueryService
from tests.cluster.harness import fixed_identity, in_process_cluster

from .adversary import ForgingExpert

QUESTION = (p.ChatMessage(role="user", content="What is the capital of France?"),)
QUERIES = 6


async def _ask(host: object, peer_id: str, **fields: object) -> p.QueryResult:
    request = p.QueryRequest(request_id=f"claims-{trio.current_time()}", messages=QUESTION, timeout_s=30.0,
                             sampling=p.SamplingParams(max_new_tokens=4), **fields)  # type: ignore[arg-type]
    with trio.fail_after(35):
        async with aclosing(ask(host, peer_id, request)) as events:
            async for event in events:
                if isinstance(event, p.QueryResult):
                    return event
    raise AssertionError("no result")


def _attacker_index(honest: int) -> int:
    """A fixed identity whose peer id sorts before the honest one's: it wins every tie."""
    return next(i for i in range(3, 64) if fixed_identity(i).peer_id < fixed_identity(honest).peer_id)


async def test_claimed_load_and_a_squatted_name_do_not_capture_routing() -> None:
    with trio.fail_after(120):
        async with in_process_cluster() as cluster:
            coordinator = await cluster.add(0, services=[QueryService()])  # coordinator only
            honest = ForgingExpert("Paris", tags=("geo",), delay=0.2, load=0.8, queue_depth=3)
            honest_node = await cluster.add(1, services=[honest])
            # 4 s (it was 1.5 s): a pause of the test process while the honest expert was measured once
            # made its moving-average latency look worse than the liar's, and the pin went to the liar.
            liar = ForgingExpert("EVIL", tags=("geo",), delay=4.0, load=0.0, queue_depth=0)
            attacker = await cluster.add(_attacker_index(1), services=[liar])
            attacker.config.name = honest_node.config.name  # the squatted name
            await attacker.announce_now()
            await coordinator.registry.wait_for(
                lambda r: (a := r.get(attacker.peer_id)) is not None and a.name == honest_node.config.name
                and r.get(honest_node.peer_id) is not None, timeout=15)
            assert {honest_node.peer_id, attacker.peer_id} <= coordinator.registry.verified_peers()

            answers = [(await _ask(honest_node.host, coordinator.peer_id, tags=("geo",), params={"semantic": False})).text
                       for _ in range(QUERIES)]
            # At most one exploratory call to the unmeasured attacker, then the measured faster expert.
            assert answers.count("Paris") >= QUERIES - 1, answers
            assert answers[-3:] == ["Paris"] * 3, answers

            for _ in range(3):
                result = await _ask(honest_node.host, coordinator.peer_id, model=honest_node.config.name)
                health = coordinator.service(QueryService).coordinator.health
                seen = {name: health.snapshot(node.peer_id) for name, node in (("honest", honest_node), ("liar", attacker))}
                assert result.text == "Paris" and result.provenance[0].served_by == honest_node.peer_id, (
                    answers, result.trace, seen)
