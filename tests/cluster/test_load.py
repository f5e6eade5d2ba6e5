"""Serving under load (issue 11, items 4 and 13): queue instead of failing while an expert is alive.

One coordinator (node 0, no model) in front of one expert (node 1) with a small
batch, so most of a burst of parallel queries waits in the expert's queue for
longer than the coordinator's first-token wait.  A live expert that reports its
queue position must not be failed over (there is nobody to fail over to: the
query would fail), and one coordinator's many parallel streams must not be
refused by the expert's per-peer stream cap while its queue has room.  Only a
truly full queue answers ``busy`` (HTTP 503 with Retry-After).
"""

from __future__ import annotations

import httpx
import trio

import protocol as p
from node.api.service import HttpService
from node.config import ExpertConfig, HttpConfig
from node.coordinator.calls import QueryFailed
from node.coordinator.service import QueryService
from node.expert.serve.service import ExpertService
from tests.cluster.harness import in_process_cluster

QUESTION = (p.ChatMessage(role="user", content="Name a primary colour."),)


def query(rid: str, tokens: int) -> p.QueryRequest:
    return p.QueryRequest(request_id=rid, messages=QUESTION, timeout_s=240.0,
                          sampling=p.SamplingParams(max_new_tokens=tokens, temperature=0.0))


async def answer(node, request: p.QueryRequest) -> p.QueryResult:
    return await node.service(QueryService).coordinator.run(request)


async def test_a_burst_queues_on_a_live_expert_instead_of_failing(base_expert):
    parallel = 12
    with trio.fail_after(240):
        async with in_process_cluster() as cluster:
            coordinator = await cluster.add(0, services=[QueryService()])
            expert = ExpertService(ExpertConfig(max_batch=1, queue_size=64), expert=base_expert, threads=1)
            await cluster.add(1, services=[expert, QueryService()])
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 1, timeout=15)
            # One answer teaches the coordinator this expert's time to first token (well under a second),
            # which used to shrink its first-token wait to the 3 s floor.
            await answer(coordinator, query("warm", 2))
            outcomes: dict[str, str] = {}

            async def one(i: int) -> None:
                try:
                    result = await answer(coordinator, query(f"burst-{i}", 8))
                    outcomes[result.request_id] = "answered"
                except QueryFailed as exc:
                    outcomes[f"burst-{i}"] = exc.code

            async with trio.open_nursery() as nursery:
                for i in range(parallel):
                    nursery.start_soon(one, i)
            failed = {rid: code for rid, code in outcomes.items() if code != "answered"}
            assert not failed, f"{len(failed)} of {parallel} failed: {sorted(set(failed.values()))}"
            assert len(outcomes) == parallel
            assert expert.worker.queue_depth == 0 and expert.worker.active == 0


async def test_a_full_queue_is_503_with_retry_after(base_expert):
    with trio.fail_after(240):
        async with in_process_cluster() as cluster:
            queries = QueryService()
            http = HttpService(HttpConfig(listen="127.0.0.1:0"), queries=queries)
            coordinator = await cluster.add(0, services=[queries, http])
            expert = ExpertService(ExpertConfig(max_batch=1, queue_size=1), expert=base_expert, threads=1)
            await cluster.add(1, services=[expert, QueryService()])
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 1, timeout=15)
            statuses: list[tuple[int, str | None]] = []

            async def one(client: httpx.AsyncClient, i: int) -> None:
                reply = await client.post("/v1/chat/completions", json={
                    "model": "mosaic/route", "messages": [{"role": "user", "content": f"Count to {i + 20}."}],
                    "max_tokens": 24, "temperature": 0})
                statuses.append((reply.status_code, reply.headers.get("retry-after")))

            async with httpx.AsyncClient(base_url=http.url, timeout=200) as client, trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(one, client, i)
            codes = sorted(code for code, _ in statuses)
            # One runs, one waits; the rest find the queue full: 503 with Retry-After, never 504/500.
            assert codes.count(200) >= 2 and set(codes) <= {200, 503}, codes
            assert all(retry is not None and int(retry) >= 1 for code, retry in statuses if code == 503)
