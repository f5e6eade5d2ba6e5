"""The pool's side of generation sessions: one trace step per session, typed failures, the receipt.

Part of the pool (the one I/O port), without importing it: a session records into the query's
:class:`~node.coordinator.ledger.TraceLedger`.  A strategy gets a :class:`PoolSession`
from ``Pool.session(...)`` and only sees ``first``, ``append`` and
``StepFailed``; the transport's own errors (expert error codes, lost streams,
timeouts) never reach it.  Each ``append`` must answer within the pool's
per-token budget for that expert, so a paused expert costs one budget, never
the whole query.  Closing stores the expert's signed receipt and the tokens
it was fed in the trace step (protocol/verify.py checks them).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

import trio

from protocol import SessionNext, SessionOpen
from protocol.receipts import prompt_digest
from protocol.verify import encode_receipt

from .calls import CLIENT_ERRORS, StepFailed, failure_code
from .health import Health, finite
from .ledger import TraceLedger

if TYPE_CHECKING:
    from .calls import Ask, Transport
    from .routing import Route


class PoolSession:
    """A session on one expert within one query (see the module docstring)."""

    def __init__(self, ledger: TraceLedger, health: Health, route: Route, index: int, raw: Any, budget: float) -> None:
        self.ledger = ledger
        self.health = health
        self.route = route
        self.index = index  # its trace step
        self.first: SessionNext = raw.first
        self.fed: list[int] = []
        self._raw = raw
        self._budget = budget
        self._began = trio.current_time()

    @property
    def peer_id(self) -> str:
        return self.route.peer_id

    async def append(self, token_ids: Sequence[int], *, top_k: int | None = None) -> SessionNext:
        """Feed tokens; the next distribution, or :class:`StepFailed` (the step is marked failed)."""
        try:
            with trio.fail_at(min(trio.current_time() + self._budget, self.ledger.deadline)):
                reply = await self._raw.append(token_ids, top_k=top_k)
        except trio.Cancelled:
            self.end("late")
            raise
        except Exception as exc:
            raise self._failed(exc) from None
        self.fed.extend(token_ids)
        return reply

    async def close(self, output: str) -> None:
        """End the session; the trace step keeps ``output`` (the fused text), the tokens fed and the receipt."""
        try:
            with trio.fail_at(min(trio.current_time() + self._budget, self.ledger.deadline)):
                closed = await self._raw.close()
        except Exception as exc:
            raise self._failed(exc) from None
        self.end("ok", output=output, receipt=encode_receipt(closed.receipt) if closed.receipt else None)

    def end(self, status: str, **fields: object) -> None:
        """Close this session's trace step with ``status`` (``ok``, ``late``, ``failed``) and ``fields``."""
        self.ledger.end_step(self.index, status=status, tokens=len(self.fed), token_ids=tuple(self.fed[:4096]),
                           seconds=finite(trio.current_time() - self._began), **fields)

    def _failed(self, exc: BaseException) -> Exception:
        return _step_failed(self.health, self.route, exc, lambda **f: self.end("failed", **f))


def _step_failed(health: Health, route: Route, exc: BaseException, end: Any) -> Exception:
    if isinstance(exc, StepFailed):
        return exc
    code = failure_code(exc)
    message = str(exc) or type(exc).__name__
    if code not in CLIENT_ERRORS:
        health.failure(route.peer_id)
    end(error=f"{code}: {message}")
    return StepFailed(code, message)


@asynccontextmanager
async def open_pool_session(ledger: TraceLedger, transport: Transport, health: Health, route: Route, ask: Ask, *,
                            budget: float, top_k: int, role: str, round: int = 0) -> AsyncIterator[PoolSession]:
    """Open a session for ``ask`` on ``route``, recorded in ``ledger``; raises ``StepFailed`` when the
    expert cannot.  ``budget``: how long each call may take (the prefill reads the whole prompt: the
    first-token budget, the expert's observed latency)."""
    index = ledger.begin_step(route, role=role, round=round, call="session", input_text=ask.text())
    ledger.end_step(index, input_digest=prompt_digest(ask.prompt, ask.messages))
    request = SessionOpen(session_id=ledger.step_request_id(index), prompt=ask.prompt, messages=ask.messages,
                          adapter=route.adapter, top_k=top_k,
                          idle_timeout_s=min(3600.0, max(1.0, ledger.remaining() + 5.0)))
    began = trio.current_time()

    def failed_open(**fields: object) -> None:
        ledger.end_step(index, status="failed", seconds=finite(trio.current_time() - began), **fields)

    async with AsyncExitStack() as stack:
        try:
            with trio.fail_at(min(trio.current_time() + budget, ledger.deadline)):
                raw = await stack.enter_async_context(transport.open_session(route.peer_id, request, budget))
        except trio.Cancelled:
            failed_open(error="cancelled while opening")
            raise
        except Exception as exc:
            raise _step_failed(health, route, exc, failed_open) from None
        health.success(route.peer_id, trio.current_time() - began)
        session = PoolSession(ledger, health, route, index, raw, budget)
        ledger.add_usage(prompt_tokens=session.first.position)
        try:
            yield session
        except BaseException as exc:
            if ledger.steps[index].status == "cancelled":  # left without close(): mark it
                session.end("late" if isinstance(exc, trio.Cancelled) else "failed")
            raise
        if ledger.steps[index].status == "cancelled":
            session.end("failed", error="session left open")
