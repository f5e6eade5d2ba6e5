"""What this node saw of the queries it coordinated: the dashboard's live feed and usage table.

:meth:`Activity.record` wraps one query at each call site (the HTTP API and
``/mosaic/query/1``) and :meth:`QueryRecorder.watch` its event stream: events
pass through unchanged and, on the side, move the node's Prometheus metrics,
keeps the last queries with their provenance and trace, counts per
contributor how many answers it served and how often its answer was the one
returned, and pushes ``query`` events to live subscribers (the dashboard's
SSE stream).

A subscriber that does not keep up loses events rather than slowing a query:
publishing never blocks (the dashboard refetches the full state on reconnect).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import trio

from protocol import QueryChunk, QueryRequest, QueryResult
from protocol.trace import Trace
from protocol.verify import check_trace

from .metrics import NodeMetrics

RECENT_QUERIES = 50
PROMPT_EXCERPT = 240
_SUBSCRIBER_BUFFER = 64
# Keys under which a trace step (any shape, see docs/api.md) names the peer that did it.
_PEER_KEYS = ("peer", "peer_id", "served_by")


@dataclass
class QueryView:
    """One query as the dashboard shows it."""

    request_id: str
    protocol: str
    strategy: str
    model: str | None
    prompt: str
    started_at: float
    status: str = "running"  # running, ok, error
    first_token_s: float | None = None
    seconds: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    answer: str = ""
    provenance: list[Any] = field(default_factory=list)
    trace: Any = None
    error: dict[str, str] | None = None
    # The request settings the coordinator got (sampling, length, strategy parameters): the
    # dashboard's box, `node query` and an API client asking alike must show the same here.
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Contribution:
    """One contributor's share of the answers this node coordinated."""

    name: str = ""
    served: int = 0  # queries in which it produced (part of) an answer
    won: int = 0  # queries whose returned answer is its text
    completion_tokens: int = 0


class Activity:
    """Recent queries, per-contributor usage and live subscribers of one node."""

    def __init__(self, metrics: NodeMetrics) -> None:
        self.metrics = metrics
        self.recent: deque[QueryView] = deque(maxlen=RECENT_QUERIES)
        self.usage: dict[str, Contribution] = {}
        self._subscribers: set[trio.MemorySendChannel[dict[str, Any]]] = set()

    # ------------------------------------------------------------------ reads

    def snapshot(self) -> dict[str, Any]:
        return {"queries": [q.to_json() for q in self.recent],
                "usage": {peer: c.__dict__ for peer, c in self.usage.items()}}

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[dict[str, Any]]]:
        """Live ``{"type": ..., ...}`` events until the ``with`` block ends."""
        send, receive = trio.open_memory_channel[dict[str, Any]](_SUBSCRIBER_BUFFER)
        self._subscribers.add(send)
        try:
            yield receive
        finally:
            self._subscribers.discard(send)
            send.close()
            receive.close()

    def _publish(self, payload: dict[str, Any]) -> None:
        for channel in list(self._subscribers):
            try:
                channel.send_nowait(payload)
            except trio.WouldBlock:
                pass  # a slow dashboard misses this one; it resyncs on reconnect
            except trio.ClosedResourceError:
                self._subscribers.discard(channel)

    # ------------------------------------------------------------------ recording a query

    @contextmanager
    def record(self, query: QueryRequest, *, protocol: str) -> Iterator[QueryRecorder]:
        """Record ``query`` from before the coordinator is asked until the caller is done.

        Wrap the whole exchange, the coordinator's context included: a failure raised
        anywhere inside (QueryFailed when the coordinator's channel closes, a deadline,
        the client leaving) is counted with its code.  Pass the events through
        :meth:`QueryRecorder.watch` to record first token and result.
        """
        view = QueryView(request_id=query.request_id, protocol=protocol, strategy=query.strategy,
                         model=query.model, prompt=_excerpt(query), started_at=time.time(),
                         settings=request_settings(query))
        self.recent.append(view)
        self.metrics.requests.labels(protocol, query.strategy).inc()
        self.metrics.in_flight.inc()
        self._publish({"type": "query", "query": view.to_json()})
        recorder = QueryRecorder(self, view, time.monotonic())
        # The caller owns the deadline (a cancel scope around all this): a cancellation at or
        # past it is a timeout, any other one the client going away.
        deadline = trio.current_effective_deadline()
        try:
            yield recorder
        except BaseException as exc:  # Cancelled included: recorded, re-raised
            if view.status == "running":
                self._failed(view, exc, recorder.elapsed(), trio.current_time() >= deadline)
            raise
        finally:
            self.metrics.in_flight.dec()
            if view.status == "running":  # the caller stopped before the result
                self._failed(view, None, recorder.elapsed(), trio.current_time() >= deadline)

    def _finished(self, view: QueryView, result: QueryResult, seconds: float) -> None:
        view.status, view.seconds, view.answer = "ok", seconds, result.text[:4000]
        view.prompt_tokens = result.usage.prompt_tokens
        view.completion_tokens = result.usage.completion_tokens
        view.provenance = [msgspec.to_builtins(p) for p in result.provenance]
        view.trace = _checked_trace(getattr(result, "trace", None))
        self.metrics.latency.labels(view.strategy).observe(seconds)
        self.metrics.tokens.labels("prompt").inc(view.prompt_tokens)
        self.metrics.tokens.labels("completion").inc(view.completion_tokens)
        for code in failed_steps(view.trace):
            self.metrics.failovers.labels(code).inc()
        names = {p.served_by: p.expert for p in result.provenance}
        winners = [p.served_by for p in result.provenance if p.role == "answer"] or [
            p.served_by for p in result.provenance[:1]]
        for peer in set(names) | trace_peers(view.trace):
            entry = self.usage.setdefault(peer, Contribution())
            entry.name = names.get(peer) or entry.name
            entry.served += 1
        for peer in set(winners):
            entry = self.usage[peer]
            entry.won += 1
            entry.completion_tokens += view.completion_tokens
        self._publish({"type": "query", "query": view.to_json()})
        self._publish({"type": "usage", "usage": self.snapshot()["usage"]})

    def _failed(self, view: QueryView, exc: BaseException | None, seconds: float, past_deadline: bool) -> None:
        exc = _cause(exc)
        if exc is None or isinstance(exc, (trio.Cancelled, GeneratorExit)):
            if past_deadline:
                code, message = "timeout", f"no complete answer within {seconds:.3g} s"
            else:
                code, message = "cancelled", "the client went away"
        else:
            code, message = str(getattr(exc, "code", None) or "internal"), str(exc)[:500]
        view.status, view.seconds, view.error = "error", seconds, {"code": code, "message": message}
        self.metrics.errors.labels(view.protocol, view.strategy, code).inc()
        self._publish({"type": "query", "query": view.to_json()})


def request_settings(query: QueryRequest) -> dict[str, Any]:
    """What decides an answer besides the question and the experts: sampling, length, parameters."""
    sampling = query.sampling
    return {"temperature": sampling.temperature, "top_p": sampling.top_p,
            "max_new_tokens": sampling.max_new_tokens, "stop": list(sampling.stop), "seed": sampling.seed,
            "params": msgspec.to_builtins(query.params), "tags": list(query.tags)}


class QueryRecorder:
    """One recorded query (see :meth:`Activity.record`)."""

    def __init__(self, activity: Activity, view: QueryView, started: float) -> None:
        self._activity = activity
        self.view = view
        self._started = started

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    async def watch(
        self, events: AsyncIterator[QueryChunk | QueryResult]
    ) -> AsyncGenerator[QueryChunk | QueryResult, None]:
        """``events`` unchanged; the first one times the first token, the result finishes the record."""
        view, activity = self.view, self._activity
        async for item in events:
            if view.first_token_s is None:
                view.first_token_s = self.elapsed()
                activity.metrics.first_token.labels(view.strategy).observe(view.first_token_s)
            if isinstance(item, QueryResult):
                activity._finished(view, item, self.elapsed())
            yield item


def _checked_trace(trace: Trace | None) -> Any:
    """The trace as JSON, each receipt replaced by the outcome of checking it (protocol/verify.py).

    This node checks what it is about to show: whether the step's peer signed exactly the
    prompt and output the trace records.  A client that does not trust this node checks the
    same receipts itself (``node query --verify``).
    """
    data = msgspec.to_builtins(trace)
    if not isinstance(trace, Trace) or not isinstance(data, dict):
        return data
    checks = {check.step: check for check in check_trace(trace)}
    for step in data.get("steps", ()):
        if isinstance(step, dict) and step.get("receipt") is not None:
            check = checks.get(step.get("index", -1))
            step["receipt"] = "signed"  # the bytes are for verifiers, not for the page
            if check is not None:
                step["verified"], step["receipt_check"] = check.ok, check.detail
    return data


def _cause(exc: BaseException | None) -> BaseException | None:
    """The exception that says why a query ended: nurseries wrap it in groups (often beside
    the Cancelled of sibling tasks); a typed one (with a ``code``) wins over a bare cancel."""
    if not isinstance(exc, BaseExceptionGroup):
        return exc
    leaves: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        item = stack.pop()
        if isinstance(item, BaseExceptionGroup):
            stack.extend(item.exceptions)
        else:
            leaves.append(item)
    typed = [e for e in leaves if getattr(e, "code", None)]
    others = [e for e in leaves if not isinstance(e, trio.Cancelled)]
    return (typed or others or leaves)[0] if leaves else None


def trace_peers(trace: Any) -> set[str]:
    """Every peer id a trace names, whatever its shape (steps nest under any key)."""
    found: set[str] = set()
    stack = [trace]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                if key in _PEER_KEYS and isinstance(value, str) and value:
                    found.add(value)
                else:
                    stack.append(value)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return found


def failed_steps(trace: Any) -> list[str]:
    """The error code of every failed step of a step trace (protocol/trace.py): each one is an
    expert the coordinator gave up on and replaced."""
    steps = trace.get("steps") if isinstance(trace, dict) else None
    codes = []
    for step in steps or ():
        if isinstance(step, dict) and step.get("status") == "failed":
            # Errors read "<code>: <message>" (the expert's ErrorMessage code) or are free text.
            head = str(step.get("error") or "").split(":", 1)[0].strip()
            codes.append(head if head.isidentifier() and len(head) <= 32 else "error")
    return codes


def _excerpt(query: QueryRequest) -> str:
    if query.messages:
        users = [m.content for m in query.messages if m.role == "user"]
        text = users[-1] if users else query.messages[-1].content
    else:
        text = query.prompt or ""
    return text[:PROMPT_EXCERPT]
