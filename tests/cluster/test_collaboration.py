"""Semantic routing on a real network, small form: a coordinator and two in-process experts.

The experts differ by self-description and tags (node 2 also serves the
``noisy`` LoRA adapter), on each engine; no tags in the query: the question alone must pick
the expert whose description matches it, with MiniLM.  The heavy form (four
expert processes, every strategy, SIGKILL and SIGSTOP) is
tests/cluster/test_collaboration_processes.py.
"""

from __future__ import annotations

from contextlib import aclosing

import trio

import protocol as p
from node.coordinator.client import ask
from node.coordinator.service import QueryService
from node.expert.serve.service import ExpertService
from node.net.discovery import dial
from tests.cluster.harness import in_process_cluster
from tests.cluster.test_query import client_host


async def answer(host, peer: str, question: str, max_tokens: int = 6, **fields) -> tuple[str, p.QueryResult]:
    request = p.QueryRequest(request_id=f"collab-{trio.current_time():.6f}", timeout_s=120.0,
                             messages=(p.ChatMessage(role="user", content=question),),
                             sampling=p.SamplingParams(max_new_tokens=max_tokens, temperature=0.0), **fields)
    text, result = [], None
    async with aclosing(ask(host, peer, request)) as events:
        async for event in events:
            if isinstance(event, p.QueryChunk):
                text.append(event.text)
            else:
                result = event
    assert result is not None
    return "".join(text), result


async def test_the_question_picks_the_expert_whose_description_matches(engine_experts):
    _, base_expert, adapter_expert = engine_experts
    with trio.fail_after(150):
        async with in_process_cluster() as cluster:
            # 30 s records: MiniLM's first load can stall a loaded 2-core box past the harness's 3 s TTL.
            coordinator = await cluster.add(0, services=[QueryService()], record_ttl=30.0)
            math = await cluster.add(1, services=[ExpertService(expert=base_expert, threads=1)], record_ttl=30.0,
                                     description="Arithmetic, numbers and math word problems", tags=("math",))
            geo = await cluster.add(2, services=[ExpertService(expert=adapter_expert, threads=1)], record_ttl=30.0,
                                    description="Geography: countries, capital cities, rivers and maps",
                                    tags=("geography",))
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 2, timeout=20)
            async with client_host() as host:
                peer = await dial(host, coordinator.full_multiaddrs()[0])
                for question, expert in (("What is the capital city of France?", geo),
                                         ("What is 12 plus 30?", math),
                                         ("Which river flows through Cairo?", geo)):
                    text, result = await answer(host, peer, question)
                    (step,) = result.trace.steps
                    assert step.peer == expert.peer_id and step.status == "ok", result.trace.decision
                    assert result.provenance[0].served_by == expert.peer_id and text == result.text != ""
                    assert "similarity" in result.trace.decision
                # With semantic matching off, the ranking falls back to load and latency only.
                _, plain = await answer(host, peer, "What is the capital city of France?",
                                        params={"semantic": False})
                assert "similarity" not in plain.trace.decision
