"""Strategies on a real network: a coordinator and four different experts on loopback.

Four in-process expert nodes with different self-descriptions and tags (node 2
also serves the ``noisy`` LoRA adapter, so its answers differ), real SmolLM2
models, the query protocol over libp2p.  Routing must pick the expert whose
description matches the question; every strategy must return a real answer
whose trace names the experts really asked.  One shared cluster per module.
"""

from __future__ import annotations

from contextlib import aclosing, asynccontextmanager

import pytest
import trio

import protocol as p
from node.coordinator import STRATEGIES
from node.coordinator.client import ask
from node.coordinator.service import QueryService
from node.expert.service import ExpertService
from node.net.discovery import dial
from tests.cluster.harness import in_process_cluster
from tests.cluster.test_query import client_host

EXPERTS = {
    1: ("Arithmetic, numbers and math word problems", ("math",)),
    2: ("Poetry, rhymes and creative writing", ("poetry",)),
    3: ("Geography: countries, capital cities, rivers and maps", ("geography",)),
    4: ("Python programming, software and source code", ("code",)),
}


@pytest.fixture(scope="module")
def more_experts(expert_data_dir):
    """Two more copies of the base model: every node needs its own worker on its own model."""
    from node.expert.loader import load_expert

    return [load_expert(None, cache_dir=expert_data_dir, device="cpu") for _ in range(2)]


@asynccontextmanager
async def team(base_expert, adapter_expert, more_experts):
    models = {1: base_expert, 2: adapter_expert, 3: more_experts[0], 4: more_experts[1]}
    async with in_process_cluster() as cluster:
        coordinator = await cluster.add(0, services=[QueryService()])
        nodes = {}
        for index, (description, tags) in EXPERTS.items():
            nodes[index] = await cluster.add(index, services=[ExpertService(expert=models[index], threads=1)],
                                             description=description, tags=tags)
        await coordinator.registry.wait_for(lambda r: len(r.experts()) == 4, timeout=20)
        async with client_host() as host:
            peer = await dial(host, coordinator.full_multiaddrs()[0])
            yield host, peer, nodes


async def answer(host, peer: str, question: str, **fields) -> tuple[str, p.QueryResult]:
    fields.setdefault("sampling", p.SamplingParams(max_new_tokens=6, temperature=0.0))
    request = p.QueryRequest(request_id=f"collab-{trio.current_time():.6f}", timeout_s=120.0,
                             messages=(p.ChatMessage(role="user", content=question),), **fields)
    text, result = [], None
    async with aclosing(ask(host, peer, request)) as events:
        async for event in events:
            if isinstance(event, p.QueryChunk):
                text.append(event.text)
            else:
                result = event
    assert result is not None
    return "".join(text), result


def check_trace(result: p.QueryResult, experts: set[str]) -> None:
    trace = result.trace
    assert trace is not None and trace.strategy == result.strategy and trace.decision
    assert trace.steps and all(step.peer in experts for step in trace.steps)
    ok = {s.peer for s in trace.steps if s.status == "ok"}
    assert result.provenance[0].served_by in ok
    for step in trace.steps:
        assert step.input_digest.startswith("sha256:") and step.seconds >= 0
        if step.status == "ok" and step.call == "generate":
            assert step.tokens > 0 and step.expert.startswith("node-")
    for rnd in {s.round for s in trace.steps}:
        for role in ("proposer", "debater", "knowledge"):
            peers = [s.peer for s in trace.steps if s.round == rnd and s.role == role]
            assert len(peers) == len(set(peers)), (result.strategy, role, peers)


async def test_semantic_route_and_vote_on_four_experts(base_expert, adapter_expert, more_experts):
    with trio.fail_after(240):
        async with team(base_expert, adapter_expert, more_experts) as (host, peer, nodes):
            experts = {n.peer_id for n in nodes.values()}
            # No tags: the question alone picks the expert whose description matches it.
            for question, index in (("What is the capital city of France?", 3),
                                    ("Write a Python function that reverses a list.", 4),
                                    ("What is 12 plus 30?", 1)):
                text, result = await answer(host, peer, question)
                (step,) = result.trace.steps
                assert step.peer == nodes[index].peer_id, (question, result.trace.decision)
                assert result.provenance[0].served_by == nodes[index].peer_id and text == result.text != ""
                assert "similarity" in result.trace.decision

            text, result = await answer(host, peer, "What is 2 plus 2?", strategy="vote", params={"k": 3})
            check_trace(result, experts)
            proposers = [s for s in result.trace.steps if s.role == "proposer"]
            assert len({s.peer for s in proposers}) == 3 and all(s.answer is not None for s in proposers)
            assert text == result.text and result.text in [s.output for s in proposers]


@pytest.mark.slow
async def test_every_strategy_answers_on_four_experts(base_expert, adapter_expert, more_experts):
    params = {"vote": {"k": 3}, "select": {"k": 2, "samples": 2}, "judge": {"k": 3}, "moa": {"k": 3},
              "debate": {"k": 3, "rounds": 2}, "refine": {"k": 2, "rounds": 2}, "knowledge": {"k": 3,
              "card_tokens": 12}, "decompose": {"parts": 2, "sub_tokens": 8}, "cascade": {"threshold": 0.99}}
    with trio.fail_after(600):
        async with team(base_expert, adapter_expert, more_experts) as (host, peer, nodes):
            experts = {n.peer_id for n in nodes.values()}
            for name in STRATEGIES:
                text, result = await answer(host, peer, "What is 6 times 7?", strategy=name,
                                            params=params.get(name, {}))
                assert result.strategy == name and result.text.strip() and text == result.text, name
                check_trace(result, experts)
                roles = {s.role for s in result.trace.steps}
                expected = {"route": {"answer"}, "prompt-route": {"router", "answer"}, "vote": {"proposer"},
                            "select": {"sampler"}, "judge": {"proposer", "judge"},
                            "moa": {"proposer", "aggregator"}, "debate": {"debater"},
                            "refine": {"debater", "summarizer"}, "knowledge": {"knowledge", "answer"},
                            "decompose": {"decomposer", "composer"}, "cascade": {"cascade", "confidence"}}[name]
                assert expected <= roles, (name, roles)
