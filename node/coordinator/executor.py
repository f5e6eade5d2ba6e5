"""The coordinator: validate a query, pick its strategy, run it under the query's deadline.

``Coordinator.run(query, emit)`` returns the :class:`QueryResult`; text of the
final answer goes to ``emit`` as :class:`QueryChunk`s while it is written (a
strategy that decides only at the end, like ``vote``, emits the winner once).
``Coordinator.answer(query)`` is the same as a channel of events (chunks, then
the result) for call sites that iterate, such as ``Activity.watch``.
Everything a strategy does with experts goes through a per-query ``Pool``;
what the coordinator remembers across queries is ``health`` (decaying
penalties) and the lazily loaded semantic ``embedder``.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable

import trio

from node.logs import get_logger
from protocol import CapabilityRecord, Provenance, QueryChunk, QueryRequest, QueryResult

from .calls import QueryFailed, Transport
from .health import Health
from .merge_port import MergePort
from .pool import Pool, candidates_of
from .reputation import Reputation, SpotChecker
from .routing import Candidate
from .semantic import Embedder
from .strategies import STRATEGIES

log = get_logger(__name__.removeprefix("node."))

QueryEvent = QueryChunk | QueryResult
EmitChunk = Callable[[QueryChunk], Awaitable[None]]


class Coordinator:
    """Plans and executes queries for one node.

    ``records`` returns the capability records of every expert the registry
    currently knows (signed, unexpired); ``transport`` reaches the experts.
    """

    def __init__(self, records: Callable[[], Iterable[CapabilityRecord]], transport: Transport | None, *,
                 first_token_timeout: float = 20.0, max_attempts: int = 3, embedder: Embedder | None = None,
                 health: Health | None = None, verified: Callable[[], set[str]] = set,
                 local_id: str | None = None, merges: MergePort | None = None) -> None:
        self._records = records
        self.merges = merges  # set by build_coordinator (coordinator/service.py): fetch, merge and serve adapters
        # Who this node verified (registry.verified_peers) and its own id: verified experts rank
        # first and a shared name means the local expert (Sybil flood, name hijack: issue 12).
        self._verified = verified
        self._local_id = local_id
        self._transport = transport
        self._first_token_timeout = first_token_timeout
        self._max_attempts = max_attempts
        self.health = health or Health()
        self.embedder = embedder or Embedder()
        # Evidence of lying experts from known-answer spot checks (issue 12, attack 7).
        self.reputation = Reputation()
        self.spot_checks = SpotChecker(self.reputation)

    @staticmethod
    def strategies() -> tuple[str, ...]:
        """Strategies that really work, listed as virtual models ``mosaic/<name>``."""
        return tuple(STRATEGIES)

    def candidates(self) -> list[Candidate]:
        return candidates_of(self._records(), self.health, verified=self._verified(), local_id=self._local_id,
                             demoted=self.demoted, observed=self.reputation.observed,
                             checked_tasks=self.reputation.checked_tasks())

    def demoted(self, peer_id: str) -> bool:
        """Caught lying (reputation.py); never this node's own expert, which it runs itself."""
        return peer_id != self._local_id and self.reputation.demoted(peer_id)

    def trust(self, peer_id: str) -> float:
        """Evidence that ``peer_id`` answers right (reputation.py; this node's own expert: full trust)."""
        return 1.0 if peer_id == self._local_id else self.reputation.trust(peer_id)

    @trio.as_safe_channel
    async def answer(self, query: QueryRequest) -> AsyncGenerator[QueryEvent, None]:
        """``async with coordinator.answer(q) as events``: chunks, then the result; raises QueryFailed.

        A channel (``trio.as_safe_channel``), not a bare async generator: the
        strategy runs in its own task, which must not be suspended at a yield
        while it holds nurseries and deadlines.
        """
        send, receive = trio.open_memory_channel[QueryEvent | QueryFailed](math.inf)

        async def produce() -> None:
            async with send:
                try:
                    result = await self.run(query, send.send)
                except QueryFailed as exc:
                    await send.send(exc)
                    return
                await send.send(result)
                await self.spot_check(result)

        error: QueryFailed | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(produce)
            async with receive:
                async for event in receive:
                    if isinstance(event, QueryFailed):
                        error = event
                        break
                    yield event
        if error is not None:
            raise error

    async def spot_check(self, result: QueryResult) -> None:
        """Now and then, check an expert that contributed against known-answer items (after the
        client has its result; bounded by reputation.CHECK_TIMEOUT per item)."""
        if not result.provenance or self._transport is None:
            return
        # Any contributor, not only the winner: a liar that loses every vote still proposes.
        peers = sorted({p.served_by for p in result.provenance if p.served_by and p.served_by != self._local_id})
        if peers and self.spot_checks.due(peers):
            peer_id = self.spot_checks.pick(peers)
            record = next((r for r in self._records() if r.peer_id == peer_id), None)
            await self.spot_checks.check(self._transport, peer_id, record.evals if record is not None else ())

    async def run(self, query: QueryRequest, emit: EmitChunk | None = None) -> QueryResult:
        """Answer ``query``; raises :class:`QueryFailed` (typed) when it cannot be answered in time."""
        strategy = STRATEGIES.get(query.strategy)
        if strategy is None:
            raise QueryFailed("bad_request", f"unknown strategy {query.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self._transport is None:
            raise QueryFailed("unavailable", "this node cannot reach experts")
        params = strategy.check(query.params)
        index = 0

        async def emit_text(text: str, provenance: Provenance) -> None:
            nonlocal index
            if emit is not None:
                await emit(QueryChunk(request_id=query.request_id, index=index, text=text, provenance=provenance))
            index += 1

        pool = Pool(query, self._records, self._transport, self.health, first_token_timeout=self._first_token_timeout,
                    max_attempts=self._max_attempts, relevance=self.embedder.similarities, emit=emit_text,
                    verified=self._verified, local_id=self._local_id, demoted=self.demoted, trust=self.trust,
                    merges=self.merges, observed=self.reputation.observed,
                    checked_tasks=self.reputation.checked_tasks)
        with trio.move_on_at(pool.deadline) as scope:
            answer = await strategy.run(pool, query, params)
        if scope.cancelled_caught:
            raise QueryFailed("timeout", f"no answer within {query.timeout_s:g} s")
        if not pool.emitted and answer.text and answer.final:
            await emit_text(answer.text, pool.provenance(answer.final[0]))
        result = pool.result(answer.text, answer.finish_reason, decision=answer.decision, final=answer.final,
                             params=params)
        log.info("query %s: %s (%d steps)", query.request_id[-12:], answer.decision[:200], len(pool.steps))
        if result.trace is not None:
            self.reputation.observe(result.trace)  # consensus evidence of fan-outs (consensus.py)
        return result
