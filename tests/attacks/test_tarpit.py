"""Issue 22 item 3: tarpit experts.

An expert that answers every request with ``Queued`` keep-alives every 0.9 s
and never a token held ``route`` until the query's whole deadline, and ``moa``
likewise, and was never penalised: each keep-alive restarted the wait.  Now
keep-alives prove life, not progress (node/coordinator/patience.py): the wait
without progress is bounded by the rate this coordinator measured, the step
fails over to the next expert, and the tarpit is penalised (health: a failure,
a ban) so the next query does not wait on it again.

Real nodes on loopback; the experts are scripted protocol speakers (the honest
ones answer at once, like a warm expert; the ranking problem is the same with
real models).
"""

from __future__ import annotations

import time
from contextlib import aclosing

import pytest
import trio

import protocol as p
from node.coordinator.calls import QueryFailed
from node.coordinator.client import ask
from node.coordinator.patience import MIN_PATIENCE_S
from node.coordinator.service import QueryService
from node.net.streams import FramedStream, serve
from tests.cluster.harness import in_process_cluster

from .adversary import ForgingExpert

pytestmark = pytest.mark.timeout(120)

NET = dict(record_ttl=120.0, announce_interval=10.0)
DEADLINE_S = 40.0
HONEST = "The answer is 42."


class TarpitExpert(ForgingExpert):
    """Answers every request with ``Queued`` keep-alives every 0.9 s, forever; never a token.
    Its record advertises an idle expert (load 0, empty queue): it ranks first."""

    def __init__(self) -> None:
        super().__init__(None)
        self.held = 0  # requests it is holding right now

    def record_fields(self) -> dict[str, object]:
        return {**super().record_fields(), "load": 0.0, "queue_depth": 0}

    async def run(self, node: object, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async def handle(stream: FramedStream) -> None:
            request = await stream.receive(p.GenerateRequest)
            self.prompts.append(request.request_id)
            self.held += 1
            try:
                while True:
                    await stream.send(p.Queued(request_id=request.request_id, position=1, waiting=1, running=1))
                    await trio.sleep(0.9)
            finally:
                self.held -= 1

        serve(node.host, p.INFER_PROTOCOL, handle, allowlist=node.allowlist)  # type: ignore[attr-defined]
        task_status.started()
        await trio.sleep_forever()


class HonestExpert(ForgingExpert):
    """Answers at once; advertises some load (an honest, somewhat busy expert ranks after an idle claim)."""

    def __init__(self) -> None:
        super().__init__(HONEST)

    def record_fields(self) -> dict[str, object]:
        return {**super().record_fields(), "load": 0.5, "queue_depth": 0}


async def _query(host, coordinator: str, **fields) -> tuple[p.QueryResult, float]:
    request = p.QueryRequest(request_id=f"tarpit-{time.monotonic_ns()}", prompt="What is six times seven?",
                             sampling=p.SamplingParams(max_new_tokens=8), timeout_s=DEADLINE_S, **fields)
    began = time.monotonic()
    last = None
    with trio.fail_after(DEADLINE_S + 15):
        async with aclosing(ask(host, coordinator, request)) as events:
            async for event in events:
                last = event
    assert isinstance(last, p.QueryResult), last
    return last, time.monotonic() - began


async def _warm_up(host, coordinator: str, expert: str) -> p.QueryResult:
    """A pinned query; a stream to a node that just started fails now and then on loopback: retried."""
    for attempt in range(3):
        try:
            return (await _query(host, coordinator, model=expert))[0]
        except QueryFailed:
            if attempt == 2:
                raise
            await trio.sleep(1.0)
    raise AssertionError("unreachable")


async def test_route_and_moa_fail_over_from_a_tarpit_well_before_the_deadline() -> None:
    with trio.fail_after(110):
        async with in_process_cluster() as cluster:
            coordinator = await cluster.add(0, services=[QueryService()], **NET)
            honest = [await cluster.add(1 + i, services=[HonestExpert()], **NET) for i in range(2)]
            tarpits = [TarpitExpert(), TarpitExpert()]
            pits = [await cluster.add(3, services=[tarpits[0]], **NET)]
            client = await cluster.add(4, **NET)
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 3, timeout=60)
            engine = coordinator.service(QueryService).coordinator
            # No random spot checks (5 % per query): one of an honest expert during the warm-up gives it
            # measured competence, and it then outranks the tarpit, which this test needs ranked first.
            engine.spot_checks.rate = 0.0
            assert min(engine.candidates(), key=lambda c: c.record.load).peer_id == pits[0].peer_id  # claims idle

            # Before: honest queries (pinned), which also measure the honest experts' rate.
            for node in honest:
                result = await _warm_up(client.host, coordinator.peer_id, node.peer_id)
                assert result.text == HONEST

            # During: the tarpit ranks first for route.  Claimed load no longer ranks (issue 22 item 7):
            # measured time to first token does, so this tarpit is one that answered fast before.
            engine.health.success(pits[0].peer_id, 0.01)
            # (No MiniLM match of the question to descriptions: its first load takes seconds on a busy box.)
            result, route_s = await _query(client.host, coordinator.peer_id, params={"semantic": False})
            assert result.text == HONEST and result.provenance[0].served_by in {n.peer_id for n in honest}
            held = [s for s in result.trace.steps if s.peer == pits[0].peer_id]
            assert held and held[0].status == "failed" and "keep-alives" in (held[0].error or ""), result.trace
            assert route_s < DEADLINE_S / 4, (route_s, [(s.peer[-6:], s.status, s.seconds, s.error)
                                                         for s in result.trace.steps])
            assert engine.health.failures(pits[0].peer_id) > 0  # penalised

            # A second, fresh tarpit joins; it ranks first again (the first one is penalised).
            pits.append(await cluster.add(5, services=[tarpits[1]], **NET))
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 4, timeout=60)
            engine.health.success(pits[1].peer_id, 0.01)  # it too answered fast before
            # moa with k=2: the other tarpit (fresh, still ranked first) is a proposer and would aggregate.
            result, moa_s = await _query(client.host, coordinator.peer_id, strategy="moa", params={"k": 2})
            assert result.text == HONEST, result.trace
            assert pits[1].peer_id in {s.peer for s in result.trace.steps if s.role == "proposer"}
            aggregator = result.trace.steps[-1]
            assert aggregator.role == "aggregator" and aggregator.peer in {n.peer_id for n in honest}
            assert moa_s < DEADLINE_S / 4, moa_s
            assert all(engine.health.failures(n.peer_id) > 0 for n in pits)

            # After: both tarpits are penalised; route answers without waiting on either.
            result, after_s = await _query(client.host, coordinator.peer_id, params={"semantic": False})
            assert result.text == HONEST
            assert not any(s.peer in {n.peer_id for n in pits} for s in result.trace.steps), result.trace
            assert after_s < MIN_PATIENCE_S, after_s
    print(f"tarpit: route answered in {route_s:.1f}s, moa in {moa_s:.1f}s, after {after_s:.2f}s "
          f"(deadline {DEADLINE_S:.0f}s)")
