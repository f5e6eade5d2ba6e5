"""The coordinator: answers one query by asking experts over ``/mosaic/infer/1``.

``Coordinator.answer(query)`` is an async iterator of :class:`QueryChunk`
events followed by one :class:`QueryResult`.  The strategy is an explicit
field of the query and a key of ``STRATEGIES``; ``route`` (ask the best
expert, fail over to the next one if it fails before its first token) is the
one that exists now, later strategies plug in beside it.

Deadlines: the overall deadline (``query.timeout_s``) belongs to the caller,
which wraps the whole iteration in ``trio.fail_after`` -- a cancel scope must
not stay open across a ``yield`` of an async generator (trio docs, "cancel
scopes and async generators").  Inside we only use scopes that close before
yielding: the wait for an expert's first token is bounded so a silent expert
is replaced instead of eating the query's whole budget.
"""

from __future__ import annotations


from node.logs import get_logger
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from typing import Protocol

import trio

from protocol import (
    GenerateRequest,
    GenerateResult,
    Provenance,
    QueryChunk,
    QueryRequest,
    QueryResult,
    TokenChunk,
    Usage,
)

from .routing import Candidate, Need, NoExpertAvailable, Route, rank

log = get_logger(__name__.removeprefix("node."))

QueryEvent = QueryChunk | QueryResult

# Floor of the adaptive first-token budget (see Coordinator.first_token_budget).
MIN_FIRST_TOKEN_BUDGET = 3.0

# Failures that another expert will not fix: do not fail over, tell the client.
_CLIENT_ERRORS = {"bad_request", "too_large"}


class QueryFailed(Exception):
    """The query cannot be answered; ``code`` is a protocol ErrorCode (busy, not_found, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ExpertClient(Protocol):
    """Streams one generation from an expert over ``/mosaic/infer/1``: in a node,
    :func:`node.expert.client.generate` bound to the node's host (coordinator/service.py)."""

    def __call__(self, peer_id: str, request: GenerateRequest) -> AsyncIterator[TokenChunk | GenerateResult]: ...


class _Observations:
    """What this coordinator saw of each expert: latency to first token, recent failures."""

    def __init__(self, alpha: float = 0.3) -> None:
        self._alpha = alpha
        self.latency: dict[str, float] = {}
        self.failures: dict[str, int] = {}

    def success(self, peer_id: str, first_token_s: float) -> None:
        old = self.latency.get(peer_id)
        self.latency[peer_id] = first_token_s if old is None else old + self._alpha * (first_token_s - old)
        self.failures.pop(peer_id, None)

    def failure(self, peer_id: str) -> None:
        self.failures[peer_id] = min(self.failures.get(peer_id, 0) + 1, 10)

    def candidate(self, record) -> Candidate:
        return Candidate(record, self.latency.get(record.peer_id), self.failures.get(record.peer_id, 0))


class Coordinator:
    """Plans and executes queries for one node.

    ``records`` returns the capability records of every expert the registry
    currently knows (signed, unexpired); ``generate`` is the infer client.
    """

    def __init__(
        self,
        records: Callable[[], Iterable],
        generate: ExpertClient,
        *,
        first_token_timeout: float = 20.0,
        max_attempts: int = 3,
    ) -> None:
        self._records = records
        self._generate = generate
        self._first_token_timeout = first_token_timeout
        self._max_attempts = max_attempts
        self.observations = _Observations()

    @staticmethod
    def strategies() -> tuple[str, ...]:
        """Strategies that really work, listed as virtual models ``mosaic/<name>``."""
        return tuple(STRATEGIES)

    def candidates(self) -> list[Candidate]:
        return [self.observations.candidate(r) for r in self._records()]

    def answer(self, query: QueryRequest) -> AsyncIterator[QueryEvent]:
        """Chunks of the answer as experts produce them, then the final :class:`QueryResult`."""
        strategy = STRATEGIES.get(query.strategy)
        if strategy is None:
            raise QueryFailed("bad_request", f"unknown strategy {query.strategy!r}; known: {', '.join(STRATEGIES)}")
        return strategy(self, query)

    # ------------------------------------------------------------------ route

    async def _route(self, query: QueryRequest) -> AsyncIterator[QueryEvent]:
        need = Need(tags=query.tags, model=query.model)
        tried: list[str] = []
        errors: list[str] = []
        codes: set[str] = set()
        started = time.monotonic()
        while len(tried) < self._max_attempts:
            try:
                routes = rank(self.candidates(), need, exclude=tried)
            except NoExpertAvailable as exc:
                raise QueryFailed("not_found", str(exc)) from None
            if not routes:
                break
            route = routes[0]
            tried.append(route.peer_id)
            outcome = self._attempt(query, route, started)
            async with aclosing(outcome) as events:
                try:
                    first = await self._first_event(events, route)
                except _AttemptFailed as exc:
                    self.observations.failure(route.peer_id)
                    errors.append(f"{route.peer_id[-8:]}: {exc.code}: {exc.message}")
                    codes.add(exc.code)
                    log.info("expert %s failed before answering (%s); failing over", route.peer_id[-8:], exc.code)
                    if exc.code in _CLIENT_ERRORS:
                        raise QueryFailed(exc.code, exc.message) from None
                    continue
                yield first
                async for event in events:
                    yield event
                return
        if not tried:
            raise QueryFailed("unavailable", "no expert is known to this node")
        code = "busy" if codes == {"busy"} else ("timeout" if codes == {"timeout"} else "unavailable")
        raise QueryFailed(code, "every expert tried failed: " + "; ".join(errors))

    def first_token_budget(self, candidate: Candidate) -> float:
        """How long to wait for an expert's first token before trying the next one.

        A peer that vanished without closing its connection (paused, in-process
        stop, network cut) leaves py-libp2p's stream open waiting ~10 s for
        multistream negotiation (measured), so waiting the full budget would
        stall the query.  When we have seen this expert answer, we allow a
        generous multiple of its observed time to first token instead.
        """
        if candidate.latency_s is None:
            return self._first_token_timeout
        return min(self._first_token_timeout, max(MIN_FIRST_TOKEN_BUDGET, 4 * candidate.latency_s + 2.0))

    async def _first_event(self, events: AsyncIterator[QueryEvent], route: Route) -> QueryEvent:
        budget = self.first_token_budget(route.candidate)
        with trio.move_on_after(budget) as scope:
            first = await events.__anext__()
        if scope.cancelled_caught:
            raise _AttemptFailed("timeout", f"no token within {budget:.1f} s")
        return first

    async def _attempt(self, query: QueryRequest, route: Route, started: float) -> AsyncIterator[QueryEvent]:
        """Stream one expert's answer as query events; failures before the first event raise _AttemptFailed."""
        record = route.candidate.record
        request = GenerateRequest(
            request_id=query.request_id,
            prompt=query.prompt,
            messages=query.messages,
            adapter=route.adapter,
            sampling=query.sampling,
            timeout_s=query.timeout_s,
            stream=True,
        )
        provenance = Provenance(served_by=record.peer_id, expert=record.name, model=record.base_model,
                                adapter=route.adapter, adapter_cid=_adapter_cid(record, route.adapter))
        index = 0
        sent_any = False
        attempt_start = time.monotonic()
        try:
            async with aclosing(self._generate(record.peer_id, request)) as stream:
                async for message in stream:
                    if isinstance(message, TokenChunk):
                        if not sent_any:
                            self.observations.success(record.peer_id, time.monotonic() - attempt_start)
                        sent_any = True
                        if message.text:
                            yield QueryChunk(request_id=query.request_id, index=index, text=message.text,
                                             provenance=provenance)
                            index += 1
                    elif isinstance(message, GenerateResult):
                        if not sent_any:
                            self.observations.success(record.peer_id, time.monotonic() - attempt_start)
                        sent_any = True
                        final = Provenance(
                            served_by=message.served_by or record.peer_id, expert=record.name,
                            model=message.model or record.base_model, adapter=message.adapter or route.adapter,
                            adapter_cid=provenance.adapter_cid,
                        )
                        usage = Usage(prompt_tokens=message.usage.prompt_tokens,
                                      completion_tokens=message.usage.completion_tokens,
                                      seconds=_finite(time.monotonic() - started),
                                      first_token_seconds=message.usage.first_token_seconds)
                        yield QueryResult(request_id=query.request_id, text=message.text,
                                          finish_reason=message.finish_reason, usage=usage,
                                          strategy=query.strategy, provenance=(final,))
                        return
            if sent_any:
                raise QueryFailed("internal", f"expert {record.peer_id[-8:]} stopped mid-answer without a result")
            raise _AttemptFailed("internal", "expert closed the stream without a result")
        except _AttemptFailed:
            raise
        except Exception as exc:  # the infer client's typed errors, transport errors
            code = getattr(exc, "code", None) or "unavailable"
            if sent_any:
                # Tokens already went to the client: failing over would repeat them.
                raise QueryFailed(code if code != "busy" else "unavailable",
                                  f"expert {record.peer_id[-8:]} failed mid-answer: {exc}") from None
            raise _AttemptFailed(code, str(exc) or type(exc).__name__) from None


STRATEGIES: dict[str, Callable[[Coordinator, QueryRequest], AsyncIterator[QueryEvent]]] = {
    "route": Coordinator._route,
}


class _AttemptFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _adapter_cid(record, adapter: str | None) -> str | None:
    if adapter is None:
        return None
    return next((a.cid for a in record.adapters if a.name == adapter), None)


def _finite(seconds: float) -> float:
    return seconds if math.isfinite(seconds) and seconds >= 0 else 0.0
