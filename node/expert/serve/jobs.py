"""Work items handed from the trio side to the inference worker thread.

A job carries the validated request, a deadline and an ``emit`` callback.  The
worker calls ``emit`` from its own thread with protocol messages; ``emit``
must be thread-safe and must never block (the trio side uses
``TrioToken.run_sync_soon`` onto an unbounded-but-capped channel: a job emits
at most ``max_new_tokens + 1`` messages, so memory stays bounded).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from protocol import GenerateRequest, Message, NextTokenRequest, ScoreRequest

if TYPE_CHECKING:
    from .session_store import SessionOp

Emit = Callable[[Message], None]


@dataclass(eq=False)
class Job:
    request: GenerateRequest | ScoreRequest | NextTokenRequest | SessionOp
    emit: Emit
    deadline: float  # time.monotonic() after which the job fails with `timeout`
    enqueued_at: float = field(default_factory=time.monotonic)
    # Set from the trio thread; read by the worker between decode steps (a plain
    # attribute write is atomic under the GIL, so no lock is needed).
    cancelled: bool = False
    # Queue reporting (worker thread only): the last Queued position sent, and when.
    reported_position: int = 0
    reported_at: float = float("-inf")
    # Set by the worker when the job leaves the queue for its prefill (read by the trio side's
    # keep-alive, node/expert/serve/local.py: a bool write is atomic under the GIL).
    started: bool = False

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def adapter(self) -> str | None:
        return self.request.adapter

    @property
    def is_generation(self) -> bool:
        return isinstance(self.request, GenerateRequest)

    @property
    def wants_progress(self) -> bool:
        """The client asked for ``Queued`` messages while this generation waits."""
        return isinstance(self.request, GenerateRequest) and self.request.progress

    def expired(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.deadline
