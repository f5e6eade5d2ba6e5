"""/mosaic/query/1 on a 3-node loopback cluster with real models.

Node 0 coordinates and serves no model; node 1 serves the base SmolLM2
(tags test,n1,expert) and node 2 the same base with the ``noisy`` LoRA adapter.
Answers must come from the remote experts, with provenance naming them, and
match what the expert produces when asked directly (greedy decoding).
"""

from __future__ import annotations

import json
import sys
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio

import protocol as p
from node.api.service import HttpService
from node.app import Node
from node.config import HttpConfig
from node.coordinator.client import ask
from node.coordinator import QueryFailed
from node.coordinator.service import QueryService
from node.expert.remote.client import generate
from node.expert.serve.service import ExpertService
from node.net.discovery import dial
from node.net.host import build_host, listen_multiaddrs
from node.net.keys import libp2p_key_pair
from tests.cluster.harness import REPO_ROOT, InProcessCluster, in_process_cluster

GREEDY = p.SamplingParams(max_new_tokens=8, temperature=0.0)
QUESTION = (p.ChatMessage(role="user", content="Name a primary colour."),)


@dataclass
class ExpertCluster:
    cluster: InProcessCluster
    coordinator: Node
    base: Node  # serves the base model
    noisy: Node  # serves the base model + the "noisy" adapter
    http: HttpService | None


@asynccontextmanager
async def expert_cluster(base_expert: Any, adapter_expert: Any, *, http: HttpConfig | None = None):
    """Coordinator (no expert, optional HTTP API) + two expert nodes, all registered with node 0."""
    async with in_process_cluster() as cluster:
        queries = QueryService()
        http_service = HttpService(http, queries=queries) if http is not None else None
        coordinator = await cluster.add(0, services=[queries, *([http_service] if http_service else [])])
        base = await cluster.add(1, services=[ExpertService(expert=base_expert, threads=1), QueryService()])
        noisy = await cluster.add(2, services=[ExpertService(expert=adapter_expert, threads=1), QueryService()])
        await coordinator.registry.wait_for(lambda r: len(r.experts()) == 2, timeout=15)
        yield ExpertCluster(cluster, coordinator, base, noisy, http_service)


@asynccontextmanager
async def client_host():
    """A bare libp2p host (fresh identity), as `python -m node query` uses: not a node."""
    listen = ["/ip4/127.0.0.1/tcp/0"]
    host = build_host(libp2p_key_pair(p.Identity.generate()), listen)
    async with host.run(listen_addrs=listen_multiaddrs(listen)):
        yield host


def query(**fields: Any) -> p.QueryRequest:
    fields.setdefault("messages", QUESTION)
    fields.setdefault("sampling", GREEDY)
    return p.QueryRequest(request_id=f"t-{id(fields)}", timeout_s=60.0, **fields)


async def ask_all(host: object, peer_id: str, request: p.QueryRequest) -> tuple[list[p.QueryChunk], p.QueryResult]:
    chunks: list[p.QueryChunk] = []
    result = None
    async with aclosing(ask(host, peer_id, request)) as events:
        async for event in events:
            if isinstance(event, p.QueryChunk):
                chunks.append(event)
            else:
                result = event
    assert result is not None
    return chunks, result


async def direct_text(host: object, expert: Node, messages: tuple[p.ChatMessage, ...], adapter: str | None = None) -> str:
    await dial(host, expert.full_multiaddrs()[0])
    request = p.GenerateRequest(request_id="direct", messages=messages, sampling=GREEDY, adapter=adapter)
    async with aclosing(generate(host, expert.peer_id, request)) as stream:
        async for message in stream:
            if isinstance(message, p.GenerateResult):
                return message.text
    raise AssertionError("no result")


async def test_query_is_answered_by_the_best_remote_expert(base_expert, adapter_expert):
    with trio.fail_after(90):
        async with expert_cluster(base_expert, adapter_expert) as c, client_host() as host:
            coordinator_id = await dial(host, c.coordinator.full_multiaddrs()[0])

            # Tag n1 matches only node 1.
            chunks, result = await ask_all(host, coordinator_id, query(tags=("n1",)))
            assert [ch.index for ch in chunks] == list(range(len(chunks))) and chunks
            assert "".join(ch.text for ch in chunks) == result.text and result.text.strip()
            assert {ch.provenance.served_by for ch in chunks} == {c.base.peer_id}
            (prov,) = result.provenance
            assert prov.served_by == c.base.peer_id != c.coordinator.peer_id
            assert prov.expert == "node-1" and prov.model == base_expert.model_id and prov.adapter is None
            assert 0 < result.usage.completion_tokens <= 8 and result.strategy == "route"
            # The routed answer is exactly what the expert says when asked directly.
            assert result.text == await direct_text(host, c.base, QUESTION)

            # A tag naming an adapter routes to the peer serving it, and asks for that adapter.
            _, noisy = await ask_all(host, coordinator_id, query(tags=("noisy",), stream=False))
            (prov,) = noisy.provenance
            assert prov.served_by == c.noisy.peer_id and prov.adapter == "noisy" and prov.adapter_cid
            assert noisy.text == await direct_text(host, c.noisy, QUESTION, adapter="noisy")

            # A peer that serves a model and coordinates routes to itself (in-process, not over libp2p).
            base_id = await dial(host, c.base.full_multiaddrs()[0])
            _, own = await ask_all(host, base_id, query(tags=("n1",)))
            assert own.provenance[0].served_by == c.base.peer_id == base_id and own.text == result.text

            # Pinning an expert by name wins over tags; raw prompts work too.
            _, pinned = await ask_all(host, coordinator_id, query(model="node-2", tags=("n1",), messages=None,
                                                                  prompt="The capital of France is"))
            assert pinned.provenance[0].served_by == c.noisy.peer_id and pinned.provenance[0].adapter is None


async def test_query_errors_are_typed(base_expert, adapter_expert):
    with trio.fail_after(90):
        async with expert_cluster(base_expert, adapter_expert) as c, client_host() as host:
            coordinator_id = await dial(host, c.coordinator.full_multiaddrs()[0])
            with pytest.raises(QueryFailed) as info:
                await ask_all(host, coordinator_id, query(model="no-such-expert"))
            assert info.value.code == "not_found"
            with pytest.raises(QueryFailed) as info:
                await ask_all(host, coordinator_id, query(strategy="no-such-strategy"))
            assert info.value.code == "bad_request" and "route" in info.value.message
            # The coordinator keeps serving after bad queries.
            _, result = await ask_all(host, coordinator_id, query(tags=("n1",)))
            assert result.provenance[0].served_by == c.base.peer_id


async def test_failover_when_the_best_expert_is_gone(base_expert, adapter_expert):
    with trio.fail_after(90):
        async with expert_cluster(base_expert, adapter_expert) as c, client_host() as host:
            coordinator_id = await dial(host, c.coordinator.full_multiaddrs()[0])
            # One answer lets the coordinator observe node 1's time to first token, which bounds
            # how long it waits for node 1 before failing over (a stopped in-process peer keeps
            # its connection half-open: streams to it hang instead of failing).
            _, first = await ask_all(host, coordinator_id, query(tags=("n1",)))
            assert first.provenance[0].served_by == c.base.peer_id
            c.cluster.stop(c.base)  # its record stays in node 0's registry until the TTL lapses
            assert c.base.peer_id in c.coordinator.registry
            started = trio.current_time()
            chunks, result = await ask_all(host, coordinator_id, query(tags=("n1",)))
            # The wait for node 1 was bounded by its observed time to first token (4x + 2 s), well
            # under the 20 s budget of a never-measured expert; then node 2 answered.
            gone, answered = result.trace.steps
            # py-libp2p may give up on the stream itself (~10 s) before our budget does.
            assert gone.peer == c.base.peer_id and gone.status == "failed"
            assert gone.error.startswith(("timeout", "unavailable"))
            assert gone.seconds < max(3.0, 4 * first.trace.steps[0].first_token_s + 2.0) + 1.0 < 21.0
            assert answered.status == "ok" and trio.current_time() - started < 60.0
            assert result.provenance[0].served_by == c.noisy.peer_id
            assert all(ch.provenance.served_by == c.noisy.peer_id for ch in chunks)
            assert c.coordinator.service(QueryService).coordinator.health.failures(c.base.peer_id) > 0.5  # decays with time


async def test_cli_query_and_status(base_expert, adapter_expert):
    with trio.fail_after(110):
        async with expert_cluster(base_expert, adapter_expert) as c:
            addr = c.coordinator.full_multiaddrs()[0]
            done = await trio.run_process(
                [sys.executable, "-m", "node", "query", "--peer", addr, "--tags", "noisy", "--max-tokens", "4",
                 "--json", "Say hi."], cwd=REPO_ROOT, capture_stdout=True, capture_stderr=True, check=False)
            assert done.returncode == 0, done.stderr.decode()[-2000:]
            result = json.loads(done.stdout.decode().strip().splitlines()[-1])
            assert result["provenance"][0]["served_by"] == c.noisy.peer_id
            assert result["provenance"][0]["adapter"] == "noisy" and 0 < result["usage"]["completion_tokens"] <= 4

            plain = await trio.run_process(
                [sys.executable, "-m", "node", "query", "--peer", addr, "--tags", "n1", "--max-tokens", "4",
                 "--strategy", "vote", "--param", "k=2", "--param", "kind=text", "--trace", "--verify",
                 "Say hi."],
                cwd=REPO_ROOT, capture_stdout=True, capture_stderr=True, check=False)
            assert plain.returncode == 0, plain.stderr.decode()[-2000:]
            assert plain.stdout.decode().strip()
            err = plain.stderr.decode()
            assert "served by" in err and "strategy=vote" in err and "k=2" in err and "kind=text" in err
            assert "proposer" in err and "decision: majority" in err and "digest sha256:" in err
            assert c.base.peer_id[-8:] in err and c.noisy.peer_id[-8:] in err  # both experts proposed
            # --verify: each proposer's signed receipt checks out against its peer id.
            assert err.count("receipt ok") == 2 and "receipt FAIL" not in err, err[-2000:]

            for bad_param in (["--param", "k"], ["--strategy", "vote", "--param", "BAD=1"]):
                bad = await trio.run_process(
                    [sys.executable, "-m", "node", "query", "--peer", addr, *bad_param, "x"],
                    cwd=REPO_ROOT, capture_stdout=True, capture_stderr=True, check=False)
                assert bad.returncode == 2 and b"invalid query" in bad.stderr, bad.stderr

            bad = await trio.run_process(
                [sys.executable, "-m", "node", "query", "--peer", addr, "--max-tokens", "0", "x"],
                cwd=REPO_ROOT, capture_stdout=True, capture_stderr=True, check=False)
            assert bad.returncode == 2 and b"invalid query" in bad.stderr

            status = await trio.run_process(
                [sys.executable, "-m", "node", "status", "--peer", addr], cwd=REPO_ROOT,
                capture_stdout=True, capture_stderr=True, check=False)
            assert status.returncode == 0, status.stderr.decode()[-2000:]
            table = status.stdout.decode()
            assert "3 peer(s)" in table and "node-1" in table and "node-2" in table
            assert base_expert.model_id in table and "noisy" in table


async def test_cli_reports_an_unreachable_peer():
    dead = "/ip4/127.0.0.1/tcp/1/p2p/" + p.Identity.generate().peer_id
    with trio.fail_after(60):
        for command in (["query", "--peer", dead, "hi"], ["status", "--peer", dead, "--timeout", "5"]):
            done = await trio.run_process([sys.executable, "-m", "node", *command], cwd=REPO_ROOT,
                                          capture_stdout=True, capture_stderr=True, check=False)
            assert done.returncode == 3, done.stderr.decode()[-1500:]
            assert b"error: dial" in done.stderr and b"Traceback" not in done.stderr
