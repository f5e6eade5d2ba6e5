"""The trace of a collaborative answer: which expert did what, in which role, with what result.

Every :class:`QueryResult` carries one.  It is data only (sans-IO): the
coordinator fills it, clients print or check it.  Sizes are capped like every
other message so a trace can never push a result over the frame cap:
at most ``MAX_STEPS`` steps of at most ``MAX_OUTPUT`` characters of output each.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .base import Message, Params, Short

MAX_STEPS = 96
MAX_OUTPUT = 2048

StepStatus = Literal["ok", "failed", "late", "cancelled"]


class TraceStep(msgspec.Struct, frozen=True, kw_only=True):
    """One call to one expert.

    ``peer`` is the peer the coordinator actually streamed from (never what
    the expert's reply claims).  ``input_digest`` is the sha256 of the exact
    prompt sent, so two steps that asked the same thing can be recognised.
    ``receipt`` is the expert's signed receipt of this step (a msgpack-encoded
    :class:`~protocol.receipts.SignedReceipt`, checked by ``node query --verify``,
    see protocol/verify.py).  A ``session`` step (token-level fusion) lists in
    ``token_ids`` the tokens fed to the expert after the prompt: what its
    receipt's input digest covers.  A ``merge`` step (the ``merge`` strategy) is the
    coordinator's own work: ``adapter``/``adapter_cid`` name the merged adapter and
    ``output`` its spec (input CIDs, method, weights, cache hit or miss).
    """

    index: Annotated[int, Meta(ge=0)]
    round: Annotated[int, Meta(ge=0, le=64)] = 0
    role: Annotated[str, Meta(max_length=32)]
    peer: Short
    expert: Annotated[str, Meta(max_length=64)] = ""
    model: Annotated[str, Meta(max_length=256)] = ""
    adapter: Annotated[str, Meta(max_length=64)] | None = None
    adapter_cid: Short | None = None
    call: Literal["generate", "score", "next_token", "session", "merge"] = "generate"
    input_digest: Short = ""
    output: Annotated[str, Meta(max_length=MAX_OUTPUT)] = ""
    answer: Annotated[str, Meta(max_length=128)] | None = None  # the extracted answer, for votes
    status: StepStatus = "ok"
    error: Annotated[str, Meta(max_length=512)] = ""
    started_s: Annotated[float, Meta(ge=0.0)] = 0.0  # since the query started
    seconds: Annotated[float, Meta(ge=0.0)] = 0.0
    first_token_s: Annotated[float, Meta(ge=0.0)] | None = None
    tokens: Annotated[int, Meta(ge=0)] = 0
    score: float | None = None  # judge log-likelihood, route score, confidence, mean token probability
    votes: Annotated[int, Meta(ge=0)] | None = None
    continues: Annotated[int, Meta(ge=0)] | None = None  # failover: the step whose partial answer this one continues
    receipt: Annotated[bytes, Meta(max_length=4096)] | None = None
    token_ids: Annotated[tuple[Annotated[int, Meta(ge=0, lt=2**31)], ...], Meta(max_length=4096)] = ()


class Trace(Message, frozen=True, kw_only=True, tag="trace"):
    """All steps of one query, in the order they started, and how the answer was decided."""

    request_id: Annotated[str, Meta(min_length=1, max_length=64)]
    strategy: Annotated[str, Meta(min_length=1, max_length=64)]
    params: Params = msgspec.field(default_factory=dict)
    steps: Annotated[tuple[TraceStep, ...], Meta(max_length=MAX_STEPS)] = ()
    decision: Annotated[str, Meta(max_length=1024)] = ""
    dropped_steps: Annotated[int, Meta(ge=0)] = 0  # steps past MAX_STEPS, counted but not kept


def digest(data: str | bytes) -> str:
    """``sha256:<hex>`` of text (UTF-8) or bytes: how traces name prompts and outputs."""
    raw = data.encode() if isinstance(data, str) else data
    return "sha256:" + hashlib.sha256(raw).hexdigest()
