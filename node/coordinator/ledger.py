"""One query's trace ledger: its steps, token usage and deadline.

Every call to an expert is recorded here as a :class:`TraceStep` (with the peer it
really streamed from), whoever makes the call: the :class:`~node.coordinator.pool.Pool`
(generate, score, next token) or a session of token-level fusion
(:mod:`node.coordinator.session_port`).  Both import this module; neither imports the other.
"""

from __future__ import annotations

import msgspec
import trio

from protocol import MAX_OUTPUT, CapabilityRecord, Provenance, QueryRequest, TraceStep, Usage, digest
from protocol.verify import step_request_id

from .health import finite
from .routing import Route


class TraceLedger:
    """The trace, usage and deadline of one query (the bookkeeping every strategy needs)."""

    def __init__(self, query: QueryRequest) -> None:
        self.query = query
        self.started = trio.current_time()
        self.deadline = self.started + query.timeout_s
        self.steps: list[TraceStep] = []
        self.prompt_tokens = 0
        self.completion_tokens = 0

    # ------------------------------------------------------------------ budgets

    def remaining(self) -> float:
        return max(0.0, self.deadline - trio.current_time())

    def until(self, fraction: float) -> float:
        """An absolute deadline ``fraction`` of the way from now to the query's deadline (stage budgets)."""
        return trio.current_time() + fraction * self.remaining()

    # ------------------------------------------------------------------ trace

    def begin_step(self, route: Route, *, role: str, round: int = 0, call: str = "generate",
                   input_text: str = "", continues: int | None = None) -> int:
        """Open a trace step for a call to ``route``'s expert; returns its index (for :meth:`end_step`)."""
        record = route.candidate.record
        step = TraceStep(index=len(self.steps), round=round, role=role[:32], peer=route.peer_id,
                         expert=record.name, model=record.base_model, adapter=route.adapter,
                         adapter_cid=adapter_cid(record, route.adapter), call=call,  # type: ignore[arg-type]
                         input_digest=digest(input_text), started_s=self.since_start(), status="cancelled",
                         continues=continues)
        self.steps.append(step)
        return step.index

    def end_step(self, index: int, **fields: object) -> None:
        """Fill in a step (status, output, answer, score, votes, receipt ...); output is truncated to the cap."""
        if "output" in fields:
            fields["output"] = str(fields["output"])[:MAX_OUTPUT]
        if "error" in fields:
            fields["error"] = str(fields["error"])[:512]
        if "answer" in fields and fields["answer"] is not None:
            fields["answer"] = str(fields["answer"])[:128]
        self.steps[index] = msgspec.structs.replace(self.steps[index], **fields)

    def provenance(self, index: int) -> Provenance:
        step = self.steps[index]
        return Provenance(served_by=step.peer, expert=step.expert, model=step.model, adapter=step.adapter,
                          adapter_cid=step.adapter_cid, role=step.role)

    def step_request_id(self, index: int) -> str:
        """The request id an expert sees for step ``index`` (fits the 64-character cap)."""
        return step_request_id(self.query.request_id, index)

    def since_start(self) -> float:
        return finite(trio.current_time() - self.started)

    # ------------------------------------------------------------------ usage

    def add_usage(self, *, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Count the tokens of a call (a session's fed tokens, a generation's usage)."""
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     seconds=self.since_start())


def adapter_cid(record: CapabilityRecord, adapter: str | None) -> str | None:
    """The CID ``record`` gives for its adapter ``adapter`` (None: the base model, or not announced)."""
    if adapter is None:
        return None
    return next((a.cid for a in record.adapters if a.name == adapter), None)
