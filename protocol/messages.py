"""Message types of the Mosaic wire protocol (version 1).

Each message is a frozen msgspec Struct encoded as a msgpack map that carries
``v`` (protocol version) and ``t`` (type tag) next to its fields.  Field-level
caps (string lengths, list lengths, numeric ranges) are part of the type, so a
decoded message is already validated.  Cross-field rules live in
``__post_init__``, which msgspec runs on decode as well.

Unknown *fields* are ignored (a newer minor revision may add optional ones);
an unknown *version* or *type* is an error.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeGuard, get_args

import msgspec
from msgspec import Meta

from .base import (
    LogProbs,
    Message,
    Name,
    NonNegInt,
    Params,
    RequestId,
    RequestTimeout,
    Seconds,
    Short,
    Text,
    TokenIds,
)
from .receipts import SignedReceipt
from .trace import Trace

# --------------------------------------------------------------------------- capability records


class AdapterInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A LoRA adapter an expert serves on top of its base model."""

    name: Name
    cid: Short | None = None
    description: Annotated[str, Meta(max_length=512)] = ""


class EvalScore(msgspec.Struct, frozen=True, kw_only=True):
    """A node's own score on a named benchmark task, carried in its signed record.

    Self-reported: routers may use it as a prior, and any peer can spot-check it by
    re-asking some of the same items (``python -m node spot-check``).  ``items_sha256``
    names exactly which items were asked (the first ``n`` of ``split``, see
    :mod:`node.expert.serve.self_eval`), so a checker with the same task file knows it has them.
    """

    task: Name
    split: Annotated[str, Meta(min_length=1, max_length=16)] = "dev"
    n: Annotated[int, Meta(ge=1, le=100_000)]
    accuracy: Annotated[float, Meta(ge=0.0, le=1.0)]
    items_sha256: Annotated[str, Meta(min_length=64, max_length=64, pattern="^[0-9a-f]{64}$")]
    adapter: Name | None = None  # None: the base model without adapters
    max_new_tokens: Annotated[int, Meta(ge=1, le=4096)] = 64


class CapabilityRecord(Message, frozen=True, kw_only=True, tag="cap"):
    """What a node offers, signed by the node's identity key (see records.py).

    ``seq`` must grow with every record a node issues (nodes use milliseconds
    since the epoch so it also grows across restarts); receivers drop a record
    whose ``seq`` is lower than one they accepted (replay).
    """

    peer_id: Short
    multiaddrs: Annotated[tuple[Annotated[str, Meta(max_length=256)], ...], Meta(max_length=16)] = ()
    name: Name
    description: Annotated[str, Meta(max_length=1024)] = ""
    tags: Annotated[tuple[Annotated[str, Meta(min_length=1, max_length=32)], ...], Meta(max_length=32)] = ()
    base_model: Annotated[str, Meta(max_length=256)] = ""
    base_model_cid: Short | None = None
    adapters: Annotated[tuple[AdapterInfo, ...], Meta(max_length=32)] = ()
    tokenizer: Annotated[str, Meta(max_length=256)] = ""
    max_context: NonNegInt = 0
    device: Annotated[str, Meta(max_length=32)] = "cpu"
    # What runs the model ("torch", "llama.cpp") and its weights' type ("Q4_K_M", "float32"); empty
    # in records of older nodes (defaults keep their records decoding).
    engine: Annotated[str, Meta(max_length=32)] = ""
    quantization: Annotated[str, Meta(max_length=32)] = ""
    load: Annotated[float, Meta(ge=0.0)] = 0.0
    queue_depth: NonNegInt = 0
    # Self-evaluation scores (bounded: 16 x ~150 bytes stays far under the 16 KiB payload cap).
    evals: Annotated[tuple[EvalScore, ...], Meta(max_length=16)] = ()
    seq: NonNegInt
    issued_at: Annotated[float, Meta(ge=0.0)]
    ttl: Annotated[float, Meta(gt=0.0, le=86_400.0)]
    # A goodbye (tombstone): the node stopped cleanly.  Receivers drop the peer at once and
    # keep the tombstone until its TTL lapses, so older records of the peer are replays.
    withdrawn: bool = False
    # NAT traversal (issue 20).  Optional fields: older nodes ignore them, and a record
    # without them decodes as "unknown" / no relay.  ``reachability`` is what AutoNAT
    # found ("public", "private", "unknown"; any other text reads as unknown).
    reachability: Annotated[str, Meta(max_length=16)] = "unknown"
    relay_service: bool = False  # the node offers Circuit Relay v2 reservations

    def expires_at(self) -> float:
        return self.issued_at + self.ttl


class SignedRecord(Message, frozen=True, kw_only=True, tag="signed"):
    """An encoded :class:`CapabilityRecord` and the issuer's Ed25519 signature over it.

    The signature covers the exact payload bytes (plus a domain prefix), so
    verification never depends on re-encoding.
    """

    payload: Annotated[bytes, Meta(max_length=16 * 1024)]
    signature: Annotated[bytes, Meta(min_length=64, max_length=64)]


class RecordBatch(Message, frozen=True, kw_only=True, tag="batch"):
    """Several signed records in one gossip message (GossipSub drops bursts; batch instead)."""

    records: Annotated[tuple[SignedRecord, ...], Meta(max_length=64)]


# --------------------------------------------------------------------------- inference


class ChatMessage(msgspec.Struct, frozen=True, kw_only=True):
    role: Literal["system", "user", "assistant"]
    content: Text


# Temperatures below this mean greedy decoding.  Dividing logits by a temperature such as
# 1e-300 overflows to inf and softmax then yields NaN (every expert crashed on it); the
# distribution at such temperatures is the argmax anyway (vLLM uses the same 1e-5).
GREEDY_TEMPERATURE = 1e-5


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    max_new_tokens: Annotated[int, Meta(ge=1, le=4096)] = 64
    temperature: Annotated[float, Meta(ge=0.0, le=5.0)] = 0.0
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    stop: Annotated[tuple[Annotated[str, Meta(min_length=1, max_length=64)], ...], Meta(max_length=8)] = ()
    seed: Annotated[int, Meta(ge=0, le=2**63 - 1)] | None = None

    @property
    def greedy(self) -> bool:
        """Greedy decoding: temperature 0, or one too small to divide logits by (GREEDY_TEMPERATURE)."""
        return self.temperature < GREEDY_TEMPERATURE


class _Prompted(Message, frozen=True, kw_only=True):
    """Either a raw ``prompt`` or chat ``messages`` (rendered with the chat template)."""

    prompt: Text | None = None
    messages: Annotated[tuple[ChatMessage, ...], Meta(max_length=256)] | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of `prompt` and `messages` is required")


class GenerateRequest(_Prompted, frozen=True, kw_only=True, tag="generate"):
    request_id: RequestId
    adapter: Name | None = None
    sampling: SamplingParams = SamplingParams()
    timeout_s: RequestTimeout = 120.0
    stream: bool = True
    # Ask for Queued messages while the request waits for a batch slot (older clients leave
    # it off and never see a message type they do not know).
    progress: bool = False


class TokenChunk(Message, frozen=True, kw_only=True, tag="chunk"):
    """Text produced since the previous chunk (tokens detokenized in context)."""

    request_id: RequestId
    index: NonNegInt
    text: Text
    token_ids: TokenIds = ()


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    prompt_tokens: NonNegInt
    completion_tokens: NonNegInt
    seconds: Seconds
    first_token_seconds: Seconds | None = None


# "repetition": the expert stopped a completion that looped (node/expert/serve/repetition.py).
FinishReason = Literal["stop", "length", "cancelled", "repetition"]


class GenerateResult(Message, frozen=True, kw_only=True, tag="result"):
    request_id: RequestId
    text: Text
    finish_reason: FinishReason
    usage: Usage
    model: Annotated[str, Meta(max_length=256)] = ""
    adapter: Name | None = None
    served_by: Short = ""
    receipt: SignedReceipt | None = None  # the expert's signed statement of this result (receipts.py)


class ScoreRequest(_Prompted, frozen=True, kw_only=True, tag="score"):
    """Ask for the log-probability of each token of ``continuation`` after the prompt."""

    request_id: RequestId
    continuation: Annotated[str, Meta(min_length=1, max_length=64 * 1024)]
    adapter: Name | None = None


class ScoreResult(Message, frozen=True, kw_only=True, tag="score_result"):
    request_id: RequestId
    token_ids: TokenIds
    logprobs: LogProbs


class NextTokenRequest(_Prompted, frozen=True, kw_only=True, tag="next_token"):
    """Ask for the top-k next-token log-probabilities after the prompt."""

    request_id: RequestId
    adapter: Name | None = None
    top_k: Annotated[int, Meta(ge=1, le=256)] = 20


class NextTokenResult(Message, frozen=True, kw_only=True, tag="next_token_result"):
    request_id: RequestId
    token_ids: TokenIds
    logprobs: LogProbs
    tokens: Annotated[tuple[Annotated[str, Meta(max_length=256)], ...], Meta(max_length=256)] = ()


class Cancel(Message, frozen=True, kw_only=True, tag="cancel"):
    request_id: RequestId


# --------------------------------------------------------------------------- queue progress (/mosaic/infer/1)


class Queued(Message, frozen=True, kw_only=True, tag="queued"):
    """The expert is alive and working towards this request (sent when ``progress`` is set).

    Sent when the request is queued, when its position changes (rate-limited)
    and as a keep-alive whenever the expert has sent nothing else on the stream
    for about a second: while the request waits, and also once it runs (a long
    prefill, a slow decode step), with ``started`` set.  So a client can tell a
    busy, progressing expert from a dead one without a fixed first-token (or
    next-token) deadline; a stopped or dead expert sends nothing.

    Wire compatibility: ``started`` is a later addition with a default, and a
    running request reports ``position`` 1 (not 0), so a peer that predates it
    decodes the keep-alive as "next to start", which is still a liveness report.
    """

    request_id: RequestId
    position: Annotated[int, Meta(ge=1)]  # 1: the next generation to start (or, with started, running)
    waiting: NonNegInt  # generations queued in total
    running: NonNegInt  # generations in the batch now
    started: bool = False  # the request is in the batch already: a keep-alive during its forward passes


# What a generation yields, in order: (``Queued`` reports,) ``TokenChunk``s, then its ``GenerateResult``.
# The one name the expert, its clients and the coordinator's transport use for that stream.
GenerateEvent = Queued | TokenChunk | GenerateResult


ErrorCode = Literal[
    "bad_request",  # the message decoded but asks for something invalid
    "not_found",  # unknown adapter / model / expert
    "busy",  # queue full: retry elsewhere or later (backpressure)
    "timeout",  # deadline passed
    "too_large",  # frame or prompt over a cap
    "cancelled",
    "unavailable",  # no expert can serve this
    "internal",  # a bug on the remote side; no traceback is sent
]


def is_error_code(code: str) -> TypeGuard[ErrorCode]:
    """Whether ``code`` is one of the protocol's error codes (a reply must never carry another)."""
    return code in _ERROR_CODES


_ERROR_CODES = frozenset(get_args(ErrorCode))


class ErrorMessage(Message, frozen=True, kw_only=True, tag="error"):
    code: ErrorCode
    message: Annotated[str, Meta(max_length=2048)]
    request_id: Annotated[str, Meta(max_length=64)] = ""



# --------------------------------------------------------------------------- generation sessions
# A session keeps a prompt's KV cache in the expert so that token-level fusion
# sends one token per step instead of the whole prompt (docs/protocol.md).

TopK = Annotated[int, Meta(ge=1, le=256)]


class SessionOpen(_Prompted, frozen=True, kw_only=True, tag="session_open"):
    """Prefill a prompt and keep its KV cache; the reply is the first :class:`SessionNext`."""

    session_id: RequestId
    adapter: Name | None = None
    top_k: TopK = 20
    idle_timeout_s: Annotated[float, Meta(gt=0.0, le=3600.0)] = 60.0  # the expert may shorten it


class SessionAppend(Message, frozen=True, kw_only=True, tag="session_append"):
    """Feed tokens (usually the one the coordinator chose) and ask for the next distribution."""

    session_id: RequestId
    token_ids: Annotated[tuple[Annotated[int, Meta(ge=0, lt=2**31)], ...], Meta(min_length=1, max_length=256)]
    top_k: TopK = 20


class SessionNext(Message, frozen=True, kw_only=True, tag="session_next"):
    """Top-k log-probabilities of the token after the session's context.

    ``text`` is the appended tokens detokenized in context (empty after open);
    ``eos_token_ids`` and ``idle_timeout_s`` are set in the reply to open.
    """

    session_id: RequestId
    position: NonNegInt  # tokens in the context (prompt + appended)
    token_ids: Annotated[tuple[Annotated[int, Meta(ge=0, lt=2**31)], ...], Meta(max_length=256)]
    logprobs: Annotated[tuple[float, ...], Meta(max_length=256)]
    text: Text = ""
    eos_token_ids: Annotated[tuple[Annotated[int, Meta(ge=0, lt=2**31)], ...], Meta(max_length=16)] = ()
    idle_timeout_s: Seconds = 0.0

    def __post_init__(self) -> None:
        if len(self.token_ids) != len(self.logprobs):
            raise ValueError("one log-probability per token id")


class SessionClose(Message, frozen=True, kw_only=True, tag="session_close"):
    session_id: RequestId


class SessionClosed(Message, frozen=True, kw_only=True, tag="session_closed"):
    """The session is gone; ``receipt`` attests to its input tokens and returned distributions."""

    session_id: RequestId
    usage: Usage  # prompt_tokens, completion_tokens = tokens appended, seconds = session lifetime
    receipt: SignedReceipt | None = None


# --------------------------------------------------------------------------- queries (/mosaic/query/1)

Tag = Annotated[str, Meta(min_length=1, max_length=32)]


class Provenance(msgspec.Struct, frozen=True, kw_only=True):
    """Which peer, model and adapter produced (part of) an answer."""

    served_by: Short
    expert: Annotated[str, Meta(max_length=64)] = ""
    model: Annotated[str, Meta(max_length=256)] = ""
    adapter: Name | None = None
    adapter_cid: Short | None = None
    role: Annotated[str, Meta(max_length=32)] = "answer"


class QueryRequest(_Prompted, frozen=True, kw_only=True, tag="query"):
    """A client's question to any peer, which coordinates the answer.

    ``model`` pins an expert (its name or peer id) or names a virtual model
    such as ``mosaic/route``; ``None`` lets the strategy choose.  ``params``
    are the strategy's parameters (docs/collaboration.md lists them).
    """

    request_id: RequestId
    strategy: Name = "route"
    tags: Annotated[tuple[Tag, ...], Meta(max_length=32)] = ()
    model: Annotated[str, Meta(min_length=1, max_length=256)] | None = None
    sampling: SamplingParams = SamplingParams()
    timeout_s: RequestTimeout = 120.0
    stream: bool = True
    params: Params = msgspec.field(default_factory=dict)


class QueryChunk(Message, frozen=True, kw_only=True, tag="query_chunk"):
    """Text of the answer produced since the previous chunk, with who produced it."""

    request_id: RequestId
    index: NonNegInt
    text: Text
    provenance: Provenance


class QueryResult(Message, frozen=True, kw_only=True, tag="query_result"):
    """The final answer; ``provenance`` lists every expert that contributed."""

    request_id: RequestId
    text: Text
    finish_reason: FinishReason
    usage: Usage
    strategy: Name = "route"
    provenance: Annotated[tuple[Provenance, ...], Meta(max_length=64)] = ()
    trace: Trace | None = None


ALL_MESSAGE_TYPES: tuple[type[Message], ...] = (
    CapabilityRecord,
    SignedRecord,
    RecordBatch,
    GenerateRequest,
    TokenChunk,
    GenerateResult,
    ScoreRequest,
    ScoreResult,
    NextTokenRequest,
    NextTokenResult,
    Cancel,
    ErrorMessage,
    QueryRequest,
    QueryChunk,
    QueryResult,
    Trace,
    Queued,
    SessionOpen,
    SessionAppend,
    SessionNext,
    SessionClose,
    SessionClosed,
)
