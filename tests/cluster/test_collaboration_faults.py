"""Faults that need real OS processes: an expert SIGKILLed mid-answer, an expert SIGSTOPped.

The coordinator is an in-process node; the experts are ``python -m node start``
processes serving the embedded model.  A killed expert's connection drops, and
the next expert continues its partial answer; a paused one keeps its
connection open and simply stops answering, which only the token budget and
the quorum catch.
"""

from __future__ import annotations

import os
import signal
import tempfile
from contextlib import aclosing, asynccontextmanager, suppress
from pathlib import Path

import pytest
import trio

import protocol as p
from node.coordinator.client import ask
from node.coordinator.service import QueryService, coordinator_for
from node.net.discovery import dial
from tests.cluster.harness import in_process_cluster, start_process
from tests.cluster.test_query import client_host

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.timeout(400)]

CONFIG = "[expert]\nthreads = 1\nmax_batch = 4\n"


@asynccontextmanager
async def process_experts(count: int):
    """An in-process coordinator (node 0) and ``count`` expert processes joined to it."""
    with tempfile.TemporaryDirectory(prefix="mosaic-faults-") as tmp:
        async with in_process_cluster() as cluster:
            coordinator = await cluster.add(0, services=[QueryService()])
            addr = coordinator.full_multiaddrs()[0]
            procs = []
            try:
                for index in range(1, count + 1):
                    procs.append(await trio.to_thread.run_sync(
                        lambda i=index: start_process(Path(tmp), i, bootstrap=[addr], config_text=CONFIG,
                                                      expert=True, timeout=180.0,
                                                      extra=["--record-ttl", "30"])))
                await coordinator.registry.wait_for(lambda r: len(r.experts()) == count, timeout=60)
                async with client_host() as host:
                    peer = await dial(host, addr)
                    yield coordinator, host, peer, procs
            finally:
                for proc in procs:
                    with suppress(ProcessLookupError):
                        os.kill(proc.process.pid, signal.SIGCONT)
                    proc.process.kill()
                    proc.process.wait()


def request(content: str, max_tokens: int, **fields) -> p.QueryRequest:
    return p.QueryRequest(request_id=f"fault-{trio.current_time():.6f}", timeout_s=120.0,
                          messages=(p.ChatMessage(role="user", content=content),),
                          sampling=p.SamplingParams(max_new_tokens=max_tokens, temperature=0.0), **fields)


async def test_sigkill_mid_stream_and_sigstop_of_an_expert():
    with trio.fail_after(380):
        async with process_experts(3) as (coordinator, host, peer, procs):
            by_peer = {proc.peer_id: proc for proc in procs}

            # Warm up: one vote measures every expert's time to first token.
            async with aclosing(ask(host, peer, request("Say hello.", 4, strategy="vote"))) as events:
                async for _ in events:
                    pass

            # SIGKILL the expert that is streaming, after its first tokens.
            chunks: list[p.QueryChunk] = []
            result = None
            killed = None
            async with aclosing(ask(host, peer, request("Count from 1 to 40, separated by commas.", 48))) as events:
                async for event in events:
                    if isinstance(event, p.QueryChunk):
                        chunks.append(event)
                        if killed is None and len(chunks) >= 3:
                            killed = by_peer[event.provenance.served_by]
                            killed.process.send_signal(signal.SIGKILL)
                    else:
                        result = event
            assert killed is not None and result is not None
            text = "".join(c.text for c in chunks)
            assert text == result.text  # one continuous answer for the streaming client
            cut, cont = result.trace.steps[0], result.trace.steps[-1]
            assert cut.peer == killed.peer_id and cut.status == "failed" and cut.output
            assert cont.continues is not None and cont.status == "ok" and cont.peer != killed.peer_id
            assert result.text.startswith(cut.output) and len(result.text) > len(cut.output)
            assert {c.provenance.served_by for c in chunks} >= {killed.peer_id, cont.peer}

            # SIGSTOP one of the two left: a vote still answers, the paused expert costs at most the grace.
            alive = [proc for proc in procs if proc is not killed]
            paused = alive[0]
            paused.process.send_signal(signal.SIGSTOP)
            try:
                started = trio.current_time()
                async with aclosing(ask(host, peer, request("What is 2 plus 2?", 6, strategy="vote",
                                                            params={"k": 2, "k_min": 1, "grace_s": 1.0}))) as events:
                    async for event in events:
                        if isinstance(event, p.QueryResult):
                            result = event
                elapsed = trio.current_time() - started
                steps = {s.peer: s for s in result.trace.steps if s.role == "proposer"}
                assert steps[alive[1].peer_id].status == "ok" and result.text.strip()
                assert steps[paused.peer_id].status in ("late", "failed")
                budget = coordinator_for(coordinator).health.raw_latency(alive[1].peer_id) or 0.0
                assert elapsed < steps[alive[1].peer_id].seconds + 1.0 + 5.0, (elapsed, budget, result.trace)
            finally:
                paused.process.send_signal(signal.SIGCONT)
