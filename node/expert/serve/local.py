"""The trio face of the inference worker: submit a request, await its messages.

The worker thread emits protocol messages through ``TrioToken.run_sync_soon``
(non-blocking: the worker never waits on the trio loop) into a per-request
memory channel.  The channel is unbounded in type but bounded in practice: a
job emits at most ``max_new_tokens`` chunks plus one terminal message, and
``max_new_tokens`` is capped.  Exactly one terminal message (``GenerateResult``,
``ScoreResult``, ``NextTokenResult`` or ``ErrorMessage``) ends every job.

Leaving :meth:`LocalExpert.open` cancels the job, so a caller that stops
reading (client gone, deadline) frees its batch slot at the next decode step.

:func:`with_keepalive` is the trio side's liveness report: the worker thread
reports queue positions only between forward passes, so a long prefill or a
slow decode step would leave a live expert silent for as long as it computes.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

import trio

from protocol import (
    ErrorCode,
    ErrorMessage,
    GenerateEvent,
    GenerateRequest,
    GenerateResult,
    Message,
    NextTokenRequest,
    NextTokenResult,
    Queued,
    ScoreRequest,
    ScoreResult,
    TokenChunk,
)

from .batcher import QUEUE_KEEPALIVE_S, InferenceWorker
from .jobs import Job

# The result type a score / next-token call expects back.
R = TypeVar("R", bound=Message)

if TYPE_CHECKING:
    from .notary import Notary
    from .session_store import SessionOp

TERMINAL = (GenerateResult, ScoreResult, NextTokenResult, ErrorMessage)

# Score / next-token calls have no timeout field of their own.
DEFAULT_CALL_TIMEOUT = 60.0


class ExpertError(Exception):
    """The expert answered with an ``ErrorMessage``; ``code`` is its ErrorCode (busy, not_found, ...)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code: ErrorCode = code
        self.message = message

    @classmethod
    def from_message(cls, message: ErrorMessage) -> ExpertError:
        return cls(message.code, message.message)


class LocalExpert:
    """Runs requests on this process's inference worker (used by the infer service and tests)."""

    def __init__(self, worker: InferenceWorker, *, notary: Notary | None = None) -> None:
        self.worker = worker
        # Signs a receipt into every GenerateResult on its way out (None: results go unsigned).
        self.notary = notary

    @asynccontextmanager
    async def open(
        self, request: GenerateRequest | ScoreRequest | NextTokenRequest | SessionOp, *, timeout: float | None = None
    ) -> AsyncIterator[tuple[Job, trio.MemoryReceiveChannel[Message]]]:
        """Submit ``request``; yield the job and the channel of its messages.

        Raises :class:`~node.expert.errors.RequestRejected` at once (busy,
        unknown adapter) without queueing anything.
        """
        if timeout is None:
            timeout = request.timeout_s if isinstance(request, GenerateRequest) else DEFAULT_CALL_TIMEOUT
        send, receive = trio.open_memory_channel[Message](math.inf)
        token = trio.lowlevel.current_trio_token()
        job: Job

        notary = self.notary

        def deliver(message: Message) -> None:  # on the trio thread
            if notary is not None and isinstance(message, GenerateResult):
                message = notary.sign_result(request, message)  # type: ignore[arg-type]
            try:
                send.send_nowait(message)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                job.cancel()

        def emit(message: Message) -> None:  # on the worker thread
            try:
                token.run_sync_soon(deliver, message)
            except trio.RunFinishedError:
                job.cancel()

        job = Job(request=request, emit=emit, deadline=time.monotonic() + timeout)
        self.worker.submit(job)
        try:
            async with receive:
                yield job, receive
        finally:
            job.cancel()

    async def generate(self, request: GenerateRequest) -> AsyncGenerator[GenerateEvent, None]:
        """(``Queued`` reports,) chunks, then the result; raises :class:`ExpertError` for an ``ErrorMessage``."""
        async with self.open(request) as (job, messages), aclosing(self.with_keepalive(job, messages)) as events:
            async for message in events:
                if isinstance(message, ErrorMessage):
                    raise ExpertError.from_message(message)
                yield message  # type: ignore[misc]
                if isinstance(message, GenerateResult):
                    return

    async def with_keepalive(
        self, job: Job, messages: trio.MemoryReceiveChannel[Message], *, drop_chunks: bool = False,
        every: float = QUEUE_KEEPALIVE_S,
    ) -> AsyncGenerator[Message, None]:
        """``messages`` as they come, plus a ``Queued`` keep-alive after each ``every`` s of silence.

        Only for a generation that asked for ``progress``.  The keep-alive comes
        from this (trio) thread, independent of the worker's forward pass, so a
        live expert computing a long prefill or a slow decode step is not taken
        for a dead one (a fixed 20 s first-token wait failed 234 of 240 requests
        at concurrency 12 on a 1.5B expert).  A stopped or dead process runs no
        trio loop either, so it still goes silent and its client fails over.
        ``drop_chunks``: a non-streamed request's ``TokenChunk``s are swallowed
        here and, since its client never sees them, do not count as activity.
        """
        progress = isinstance(job.request, GenerateRequest) and job.request.progress
        quiet_since = trio.current_time()
        while True:
            message: Message | None = None
            # No yield inside a cancel scope (trio forbids it in async generators).
            with trio.move_on_at(quiet_since + every if progress else math.inf):
                try:
                    message = await messages.receive()
                except trio.EndOfChannel:
                    return
            if message is None:
                quiet_since = trio.current_time()
                if not job.cancelled:
                    yield self._keepalive(job)
                continue
            if drop_chunks and isinstance(message, TokenChunk):
                continue
            quiet_since = trio.current_time()
            yield message

    def _keepalive(self, job: Job) -> Queued:
        """Where ``job`` stands now, read without the worker's lock (counts may be a step stale)."""
        worker = self.worker
        return Queued(request_id=job.request_id, position=1 if job.started else max(1, job.reported_position),
                      waiting=worker.queue_depth, running=worker.active, started=job.started)

    async def score(self, request: ScoreRequest) -> ScoreResult:
        return await self.call(request, ScoreResult)

    async def next_token(self, request: NextTokenRequest) -> NextTokenResult:
        return await self.call(request, NextTokenResult)

    async def call(self, request: ScoreRequest | NextTokenRequest | SessionOp, kind: type[R]) -> R:
        """Run a one-reply request (score, next token, a session operation); its ``kind`` result,
        or :class:`ExpertError` for an ``ErrorMessage``."""
        async with self.open(request) as (_, messages):
            message = await messages.receive()
        if isinstance(message, ErrorMessage):
            raise ExpertError.from_message(message)
        assert isinstance(message, kind), message
        return message
