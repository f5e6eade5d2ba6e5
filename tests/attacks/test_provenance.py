"""Attack 2 (issue 12): forged provenance and name hijack.

A malicious expert takes the honest expert's name and writes the honest
node's peer id and a famous model into its results.  Before the defence the
coordinator reported ``served_by=<honest id>`` / ``model=gpt-4o-...`` with the
attacker's text, and a request pinned to the name went to the attacker even
on the honest expert's own node.  Now provenance is the authenticated stream
peer and its own signed record; a shared name resolves to the local expert
(else to verified claimants); a peer id pins exactly one expert.
"""

from __future__ import annotations

from contextlib import aclosing

import trio

import protocol as p
from node.coordinator.client import ask
from node.coordinator.service import QueryService
from node.expert.serve.service import ExpertService
from tests.cluster.harness import fixed_identity, in_process_cluster

from .adversary import ForgingExpert

QUESTION = (p.ChatMessage(role="user", content="Name a primary colour."),)


async def _ask(host: object, peer_id: str, model: str) -> p.QueryResult:
    request = p.QueryRequest(request_id=f"pin-{trio.current_time()}", messages=QUESTION, timeout_s=60.0,
                             sampling=p.SamplingParams(max_new_tokens=4), model=model)
    with trio.fail_after(60):
        async with aclosing(ask(host, peer_id, request)) as events:
            async for event in events:
                if isinstance(event, p.QueryResult):
                    return event
    raise AssertionError("no result")


def _attacker_index() -> int:
    """A fixed identity whose peer id sorts before node 0's: it wins every tie on the old ranking."""
    honest = fixed_identity(0).peer_id
    return next(i for i in range(2, 64) if fixed_identity(i).peer_id < honest)


async def test_forged_provenance_and_name_hijack(base_expert) -> None:
    with trio.fail_after(120):
        async with in_process_cluster() as cluster:
            honest = await cluster.add(0, services=[ExpertService(expert=base_expert, threads=1), QueryService()])
            coordinator = await cluster.add(1, services=[QueryService()])
            liar = ForgingExpert(served_by=honest.peer_id, model="gpt-4o-2024-08-06")
            attacker = await cluster.add(_attacker_index(), services=[liar, QueryService()])
            attacker.config.name = honest.config.name  # the hijacked name
            await attacker.announce_now()
            for node in (honest, coordinator):
                await node.registry.wait_for(
                    lambda r: (rec := r.get(attacker.peer_id)) is not None and rec.name == honest.config.name, timeout=15)
            name = honest.config.name

            # On the honest expert's own node the name means the local expert.
            result = await _ask(attacker.host, honest.peer_id, name)
            assert result.provenance[0].served_by == honest.peer_id and result.text != "EVIL"

            # Elsewhere both claimants are verified: whoever answers, provenance tells the truth.
            for _ in range(3):
                result = await _ask(honest.host, coordinator.peer_id, name)
                prov = result.provenance[0]
                if result.text == "EVIL":
                    assert prov.served_by == attacker.peer_id, "the attacker's text credited to another peer"
                    assert prov.model == liar.base_model, "the model named in the result was trusted"
                else:
                    assert prov.served_by == honest.peer_id
                    assert prov.model == honest.own_record().base_model

            # A client pinning the peer id always reaches that peer.
            for peer in (honest, attacker):
                result = await _ask(honest.host, coordinator.peer_id, peer.peer_id)
                assert result.provenance[0].served_by == peer.peer_id
                assert (result.text == "EVIL") == (peer is attacker)
