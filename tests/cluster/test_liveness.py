"""Liveness of a slow but live expert vs a stopped one, through a real coordinator (issue 11).

The coordinator gives an expert a silence budget (its ``first_token_timeout`` for an
expert it has not measured); an expert that is computing (a long prefill of a big
model on a loaded CPU, a slow decode step) must not be taken for a dead one, while
one that is really gone must still be failed over within that budget.  The slow
forward pass is a real one (of the default engine), made slower by sleeping in the worker thread.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from node.coordinator.service import QueryService
from node.expert.serve.service import ExpertService
from node.net.discovery import dial
from tests.cluster.test_query import ask_all, client_host, expert_cluster, query

BUDGET = 2.0  # the coordinator's silence budget for an unmeasured expert (default 20 s)
SLOW = 4.0  # seconds added to the expert's prefill and to one decode step: over twice the budget


async def test_a_slow_live_expert_is_waited_on_and_a_stopped_one_is_failed_over(base_expert, adapter_expert,
                                                                                  monkeypatch):
    with trio.fail_after(120):
        async with expert_cluster(base_expert, adapter_expert) as c, client_host() as host:
            coordinator_id = await dial(host, c.coordinator.full_multiaddrs()[0])
            coordinator = c.coordinator.service(QueryService).coordinator
            monkeypatch.setattr(coordinator, "_first_token_timeout", BUDGET)
            monkeypatch.setattr(coordinator.spot_checks, "due", lambda *peers: False)  # no extra forwards
            worker = next(s for s in c.base.services if isinstance(s, ExpertService)).worker
            # Its thread makes the llama.cpp context after the node is up: wait for the loop to run.
            await trio.to_thread.run_sync(worker.between_steps(lambda: None).result, 60)
            # The model step of either engine: the torch worker's forward, llama.cpp's llama_decode.
            owner, name = (worker.context, "decode") if worker.name == "llama.cpp" else (worker, "_forward")
            real_step = getattr(owner, name)
            calls = 0

            def slow_step(*args: Any, **inputs: Any) -> Any:
                nonlocal calls
                calls += 1
                if calls in (1, 3):  # the prefill (before the first token), then a decode step mid-answer
                    time.sleep(SLOW)
                return real_step(*args, **inputs)

            monkeypatch.setattr(owner, name, slow_step)

            # 1. Live but slow: the expert's keep-alives hold the step, no failover, one answer.
            chunks, result = await ask_all(host, coordinator_id, query(tags=("n1",)))
            assert len(result.trace.steps) == 1, [(s.peer[-8:], s.status, s.error) for s in result.trace.steps]
            step = result.trace.steps[0]
            assert step.peer == c.base.peer_id and step.status == "ok", step
            assert result.provenance[0].served_by == c.base.peer_id and result.text.strip()
            assert {ch.provenance.served_by for ch in chunks} == {c.base.peer_id}
            assert calls >= 3 and result.usage.completion_tokens >= 3  # the mid-answer stall happened
            assert step.first_token_s is not None and step.first_token_s > SLOW - 0.5 > BUDGET
            assert step.seconds is not None and step.seconds > 2 * SLOW - 1.0

            # 2. Gone (stopped in-process: its connection stays half-open, streams hang): silent,
            # so the coordinator gives up on it within the budget and the other expert answers.
            c.cluster.stop(c.base)
            chunks, result = await ask_all(host, coordinator_id, query(tags=("n1",)))
            gone, answered = result.trace.steps
            assert gone.peer == c.base.peer_id and gone.status == "failed", gone
            assert gone.error.startswith(("timeout", "unavailable")) and gone.seconds < BUDGET + 1.5
            assert answered.status == "ok" and result.provenance[0].served_by == c.noisy.peer_id
