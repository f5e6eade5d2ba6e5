"""The vocabulary of one call to an expert: what is asked, what comes back, how it fails.

Strategies and the pool (pool.py) speak in these terms; keeping them apart from
the pool's bookkeeping leaves pool.py to the calls themselves.  ``Transport`` is
the pool's one dependency on the network (``/mosaic/infer/1`` in a node, an
in-memory fake in the conformance tests).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from typing import Any, Protocol

import trio

from protocol import (
    ChatMessage,
    GenerateEvent,
    GenerateRequest,
    NextTokenRequest,
    NextTokenResult,
    QueryRequest,
    Queued,
    ScoreRequest,
    ScoreResult,
    SessionOpen,
)

from .routing import Route

# Failures that another expert will not fix: do not fail over, tell the client.
CLIENT_ERRORS = frozenset({"bad_request", "too_large"})


def failure_code(exc: BaseException) -> str:
    """The error code of a failed call to an expert: ``timeout`` for a deadline, the code of the
    expert's typed error (its ``ErrorMessage``), else ``unavailable`` (a lost stream, a refused dial)."""
    if isinstance(exc, trio.TooSlowError):
        return "timeout"
    return getattr(exc, "code", None) or "unavailable"


class QueryFailed(Exception):
    """The query cannot be answered; ``code`` is a protocol ErrorCode (busy, not_found, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def alive_but_waiting(message: object) -> bool:
    """The liveness policy: is ``message`` an expert's report that it is alive and on our request?

    A ``Queued`` report: the request waits in its queue, or (``started``) runs a
    forward pass that is taking a while (the expert's keep-alive, node/expert/serve/local.py).

    Such a report restarts the token budget without counting as a first token.  A
    fixed first-token wait turned a burst of 64 requests into 48 errors on an
    expert whose queue held them all, and into failovers to equally busy experts;
    only an expert that stays silent for a whole budget is given up on.
    """
    return isinstance(message, Queued)


class StepFailed(QueryFailed):
    """One call to one expert (or every expert of a failover list) failed."""


class Transport(Protocol):
    """How the pool reaches an expert: ``/mosaic/infer/1`` in a node (coordinator/service.py)."""

    def generate(
        self, peer_id: str, request: GenerateRequest
    ) -> AsyncGenerator[GenerateEvent, None]: ...

    async def score(self, peer_id: str, request: ScoreRequest, timeout: float) -> ScoreResult: ...

    async def next_token(self, peer_id: str, request: NextTokenRequest, timeout: float) -> NextTokenResult: ...

    def open_session(self, peer_id: str, request: SessionOpen, timeout: float) -> AbstractAsyncContextManager[Any]:
        """A generation session (node.expert.remote.session_client.ExpertSession: ``first``, ``append``, ``close``)."""
        ...


@dataclass(frozen=True, slots=True)
class Ask:
    """What one step asks an expert: a chat or a raw prompt, and how much to generate."""

    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    max_tokens: int | None = None  # None: the query's own max_new_tokens
    temperature: float | None = None  # None: the query's
    seed: int | None = None

    @classmethod
    def of(cls, query: QueryRequest) -> Ask:
        """The client's own question, as asked."""
        return cls(messages=query.messages, prompt=query.prompt)

    def continued(self, partial: str) -> Ask:
        """The same ask with ``partial`` already answered: the next expert continues it.

        Chat: a trailing assistant message, which the expert renders as a prefix
        to continue (expert/serve/prompts.py); raw prompts simply grow.
        """
        if self.messages is not None:
            return replace(self, messages=self.messages + (ChatMessage(role="assistant", content=partial),))
        return replace(self, prompt=(self.prompt or "") + partial)

    def text(self) -> str:
        if self.messages is not None:
            return "\n".join(f"{m.role}: {m.content}" for m in self.messages)
        return self.prompt or ""


@dataclass(frozen=True, slots=True)
class Reply:
    """A finished generation step (possibly stitched from several experts after failover)."""

    route: Route  # the expert that produced the end of the text
    text: str
    finish_reason: str
    tokens: int
    step: int  # trace index of the last step
