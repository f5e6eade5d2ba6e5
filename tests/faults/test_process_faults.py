"""Faults on real expert processes during queries: SIGKILL, SIGSTOP, a slowed expert.

Two expert nodes run as OS processes (``python -m node start``); the coordinator
is a node in this process and clients ask it over ``/mosaic/query/1``.  Whatever
happens to an expert, every query must end -- answered, or failed with a typed,
readable error -- within its deadline (plus a small grace), never hang.

The pause is ``MOSAIC_FAULT_PAUSE`` seconds (issue 12 asks for 30 s; CI's small
form uses 5 s).  Fan-out strategies (vote, moa) under the same faults:
tests/faults/test_fanout_faults.py.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from contextlib import aclosing, contextmanager
from pathlib import Path

import pytest
import trio

import protocol as p
from node.coordinator.client import ask
from node.coordinator.executor import QueryFailed
from node.coordinator.service import QueryService
from tests.cluster.harness import in_process_cluster, start_process

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow, pytest.mark.timeout(600)]

PAUSE = float(os.environ.get("MOSAIC_FAULT_PAUSE", "5"))
DEADLINE = 30.0  # each query's timeout_s
GRACE = 5.0  # the coordinator's error frame and the client's read on top of the deadline
EXPERT_CONFIG = "[expert]\nthreads = 1\nmax_batch = 2\n"
CLEAR_CODES = {"timeout", "unavailable", "internal", "busy"}


@contextmanager
def expert_processes(count: int):
    with tempfile.TemporaryDirectory(prefix="mosaic-faults-") as tmp:
        root = Path(tmp)
        procs = []
        try:
            for index in range(count):
                bootstrap = [procs[0].multiaddr] if procs else []
                procs.append(start_process(root, 10 + index, bootstrap=bootstrap, config_text=EXPERT_CONFIG,
                                           expert=True, timeout=180.0))
            yield procs
        finally:
            for proc in procs:
                if proc.process.poll() is None:
                    proc.process.send_signal(signal.SIGCONT)
                    proc.process.kill()
                    proc.process.wait()


async def query(host: object, coordinator: str, *, tokens: int = 32, on_first=None) -> tuple[str, str, float]:
    """Ask one query; return (outcome, detail, seconds): ("answered", served_by) or (code, message)."""
    request = p.QueryRequest(request_id=f"fault-{time.monotonic_ns()}", prompt="Count from one to twenty in words:",
                             sampling=p.SamplingParams(max_new_tokens=tokens), timeout_s=DEADLINE, stream=True)
    started = time.monotonic()
    first = True
    try:
        with trio.fail_after(DEADLINE + GRACE):  # a hang fails the test here
            async with aclosing(ask(host, coordinator, request)) as events:
                async for event in events:
                    if first and isinstance(event, p.QueryChunk):
                        first = False
                        if on_first is not None:
                            on_first(event.provenance.served_by)
                    if isinstance(event, p.QueryResult):
                        return "answered", event.provenance[0].served_by, time.monotonic() - started
    except QueryFailed as exc:
        assert exc.code in CLEAR_CODES and exc.message, (exc.code, exc.message)
        return exc.code, exc.message, time.monotonic() - started
    raise AssertionError("the stream ended without a result or an error")


async def test_kill_pause_and_slow_experts_never_hang_a_query() -> None:
    with expert_processes(2) as procs:
        by_peer = {proc.peer_id: proc for proc in procs}
        async with in_process_cluster() as cluster:
            coordinator = await cluster.add(0, bootstrap=[procs[0].multiaddr], services=[QueryService()],
                                            record_ttl=30.0)
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 2, timeout=60)
            asker = await cluster.add(1, bootstrap=[coordinator.full_multiaddrs()[0]], record_ttl=30.0)
            client = asker.host

            # Warm-up: the first queries may time out while the coordinator loads MiniLM and the
            # experts their first batch, but each within its deadline (query() checks that).
            for _ in range(4):
                outcome, preferred, seconds = await query(client, coordinator.peer_id)
                if outcome == "answered":
                    break
            assert outcome == "answered", preferred
            other = next(pid for pid in by_peer if pid != preferred)

            # 1. SIGSTOP the expert the coordinator prefers, before the query: it fails over.
            by_peer[preferred].process.send_signal(signal.SIGSTOP)
            paused_at = time.monotonic()
            outcome, detail, seconds = await query(client, coordinator.peer_id)
            assert (outcome, detail) == ("answered", other), (outcome, detail)
            assert seconds < DEADLINE

            # 2. SIGKILL the expert answering, mid-answer: a typed error (tokens were already sent).
            victim: list[str] = []
            outcome, detail, seconds = await query(
                client, coordinator.peer_id, tokens=200,
                on_first=lambda peer: (victim.append(peer), by_peer[peer].process.kill()))
            assert victim == [other]
            assert outcome == "answered" or outcome in CLEAR_CODES, (outcome, detail)
            assert seconds < DEADLINE + GRACE

            # 3. The paused expert comes back after PAUSE s and serves again (the killed one is gone).
            await trio.sleep(max(0.0, PAUSE - (time.monotonic() - paused_at)))
            by_peer[preferred].process.send_signal(signal.SIGCONT)
            outcome, detail, seconds = await query(client, coordinator.peer_id)
            assert (outcome, detail) == ("answered", preferred), (outcome, detail)

            # 4. A slowed expert (stopped 80% of the time) mid-answer: answered late or a timeout, in time.
            async def slow_down() -> None:
                proc = by_peer[preferred].process
                while True:
                    proc.send_signal(signal.SIGSTOP)
                    await trio.sleep(0.4)
                    proc.send_signal(signal.SIGCONT)
                    await trio.sleep(0.1)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow_down)
                outcome, detail, seconds = await query(client, coordinator.peer_id, tokens=200)
                nursery.cancel_scope.cancel()
            by_peer[preferred].process.send_signal(signal.SIGCONT)
            assert outcome in ("answered", "timeout"), (outcome, detail)
            assert seconds < DEADLINE + GRACE
