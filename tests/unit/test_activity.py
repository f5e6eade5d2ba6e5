"""node.activity without a network: what a watched query leaves in the feed, the usage table and the metrics."""

from __future__ import annotations

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

import protocol as p
from node.activity import Activity, trace_peers
from node.metrics import NodeMetrics

A, B = "12D3KooWPeerA", "12D3KooWPeerB"
QUERY = p.QueryRequest(request_id="q1", messages=(p.ChatMessage(role="user", content="2+2?"),), strategy="route",
                       timeout_s=5.0)


def result(*provenance: p.Provenance) -> p.QueryResult:
    return p.QueryResult(request_id="q1", text="4", finish_reason="stop", strategy="route", provenance=provenance,
                         usage=p.Usage(prompt_tokens=7, completion_tokens=3, seconds=0.5))


async def watched(activity: Activity, query: p.QueryRequest, stream, protocol: str = "http") -> list:
    """What a call site does: record the query around the whole exchange, watch its events."""
    with activity.record(query, protocol=protocol) as recorder:
        return [e async for e in recorder.watch(stream)]


async def events(*items, fail: Exception | None = None):
    for item in items:
        await trio.sleep(0)
        yield item
    if fail is not None:
        raise fail


def value(metrics: NodeMetrics, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return 0.0


async def test_a_finished_query_is_recorded_and_passed_through_unchanged():
    activity = Activity(NodeMetrics())
    prov = p.Provenance(served_by=A, expert="math")
    chunk = p.QueryChunk(request_id="q1", index=0, text="4", provenance=prov)
    with activity.subscribe() as feed:
        seen = await watched(activity, QUERY, events(chunk, result(prov)))
        published = [feed.receive_nowait() for _ in range(3)]
    assert seen == [chunk, result(prov)]
    (view,) = activity.recent
    assert view.status == "ok" and view.prompt == "2+2?" and view.completion_tokens == 3
    assert view.provenance == [{"served_by": A, "expert": "math", "model": "", "adapter": None,
                                "adapter_cid": None, "role": "answer"}]
    assert activity.usage[A].served == 1 and activity.usage[A].won == 1 and activity.usage[A].name == "math"
    assert [e["type"] for e in published] == ["query", "query", "usage"]
    assert value(activity.metrics, "mosaic_requests_total", protocol="http", strategy="route") == 1
    assert value(activity.metrics, "mosaic_tokens_total", kind="completion") == 3
    assert value(activity.metrics, "mosaic_time_to_first_token_seconds_count", strategy="route") == 1
    assert value(activity.metrics, "mosaic_queries_in_flight") == 0


async def test_a_failed_query_counts_its_error_code_and_reraises():
    activity = Activity(NodeMetrics())

    class Failed(Exception):
        code = "unavailable"

    with pytest.raises(Failed):
        await watched(activity, QUERY, events(fail=Failed("every expert failed")), "libp2p")
    (view,) = activity.recent
    assert view.status == "error" and view.error == {"code": "unavailable", "message": "every expert failed"}
    assert value(activity.metrics, "mosaic_request_errors_total", protocol="libp2p", strategy="route",
                 code="unavailable") == 1
    assert activity.usage == {}


async def test_a_deadline_is_a_timeout_a_client_leaving_a_cancel_and_a_failure_keeps_its_code():
    activity = Activity(NodeMetrics())

    async def silent():
        await trio.sleep_forever()
        yield  # pragma: no cover

    quick = p.QueryRequest(request_id="q2", prompt="x", timeout_s=0.05)
    with trio.move_on_after(0.05):
        await watched(activity, quick, silent())
    async def leave_soon(scope: trio.CancelScope) -> None:  # the client goes away: a cancel, no deadline
        await trio.sleep(0.01)
        scope.cancel()

    async with trio.open_nursery() as nursery:
        with trio.CancelScope() as leaving:
            nursery.start_soon(leave_soon, leaving)
            await watched(activity, QUERY, silent())
    # A failure raised after the events ended (as the coordinator's channel raises QueryFailed on exit).
    failed = Exception("no expert")
    failed.code = "unavailable"  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="no expert"), activity.record(QUERY, protocol="http"):
        raise failed
    # ... also inside the exception group of a nursery, next to a sibling's Cancelled.
    with pytest.raises(BaseExceptionGroup), activity.record(QUERY, protocol="http"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise failed
    assert [q.error["code"] for q in activity.recent] == ["timeout", "cancelled", "unavailable", "unavailable"]


async def test_trace_peers_count_as_served_and_the_answer_wins():
    activity = Activity(NodeMetrics())
    traced = result(p.Provenance(served_by=A, expert="math"))
    trace = {"strategy": "vote", "steps": [{"role": "proposer", "peer": A},
                                            {"role": "proposer", "peer": B, "status": "failed", "error": "timeout: 3 s"},
                                            {"role": "proposer", "peer": "C", "continues": 1}]}
    assert trace_peers(trace) == {A, B, "C"}

    class WithTrace:  # duck-typed like a QueryResult that carries a trace
        def __init__(self, base: p.QueryResult) -> None:
            self.__dict__.update({f: getattr(base, f) for f in base.__struct_fields__})
            self.trace = trace

    await watched(activity, QUERY, events(traced))
    assert activity.usage[A].won == 1 and B not in activity.usage
    view = activity.recent[-1]
    activity._finished(view, WithTrace(traced), 1.0)  # type: ignore[arg-type]
    assert activity.usage[B].served == 1 and activity.usage[B].won == 0 and activity.usage[A].won == 2
    assert value(activity.metrics, "mosaic_failovers_total", code="timeout") == 1


async def test_a_slow_subscriber_loses_events_instead_of_blocking_queries():
    activity = Activity(NodeMetrics())
    prov = p.Provenance(served_by=A)
    with activity.subscribe():
        for _ in range(40):  # 3 events each, far beyond the subscriber's buffer
            await watched(activity, QUERY, events(result(prov)))
    assert len(activity.recent) == 40 and activity.usage[A].won == 40


def test_failed_steps_of_a_trace_are_failovers_by_code():
    from node.activity import failed_steps

    trace = {"strategy": "route", "steps": [
        {"index": 0, "role": "answer", "peer": A, "status": "failed", "error": "busy: queue full"},
        {"index": 1, "role": "answer", "peer": B, "status": "failed", "error": "stream reset by peer"},
        {"index": 2, "role": "answer", "peer": "C", "status": "ok", "continues": 1},
    ]}
    assert failed_steps(trace) == ["busy", "error"]
    assert failed_steps(None) == [] and failed_steps([{"status": "failed"}]) == []
    assert trace_peers(trace) == {A, B, "C"}


def test_receipts_in_a_trace_are_checked_before_the_dashboard_shows_them():
    import msgspec

    from node.activity import _checked_trace
    from protocol.receipts import Receipt, sign_receipt, text_digest
    from protocol.trace import Trace, TraceStep
    from protocol.verify import encode_receipt, step_request_id

    expert = p.Identity.generate()
    prompt_digest = "sha256:" + "0" * 64

    def step(index: int, output: str, signed_output: str) -> TraceStep:
        receipt = Receipt(kind="generate", request_id=step_request_id("q1", index), peer_id=expert.peer_id,
                          model_cid="", input_digest=prompt_digest, output_digest=text_digest(signed_output), tokens=3)
        return TraceStep(index=index, role="proposer", peer=expert.peer_id, input_digest=prompt_digest,
                         output=output, receipt=encode_receipt(sign_receipt(receipt, expert)))

    trace = Trace(request_id="q1", strategy="vote", steps=(
        step(0, "four", "four"),       # what the expert signed
        step(1, "five", "four"),       # the coordinator changed the output after the expert signed it
        TraceStep(index=2, role="judge", peer=expert.peer_id, call="score"),  # unsigned call: nothing to check
    ))
    shown = _checked_trace(trace)
    good, edited, unsigned = shown["steps"]
    assert good["verified"] is True and good["receipt"] == "signed"
    assert edited["verified"] is False and edited["receipt_check"]
    assert "verified" not in unsigned and unsigned["receipt"] is None
    assert msgspec.json.encode(shown)  # JSON for the page: no bytes left
