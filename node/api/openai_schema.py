"""OpenAI request schemas with validation, and translation to Mosaic queries / OpenAI responses.

Requests are decoded with msgspec straight from the body bytes, so a wrong
type or an out-of-range value becomes a 400 that names the parameter (as
OpenAI does) instead of reaching the coordinator.  Fields OpenAI defines but
Mosaic cannot honour are rejected when set to a value that would change the
answer (``n > 1``, tools, ``echo``, logprobs) rather than silently ignored.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from node.coordinator.decoding import fill_defaults
from protocol import (
    ChatMessage,
    Params,
    QueryRequest,
    QueryResult,
    SamplingParams,
    trace_digest,
)

from .errors import ApiError, bad_request

MAX_TOKENS_CAP = 4096  # protocol.SamplingParams.max_new_tokens
DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions

Stop = Annotated[str, Meta(min_length=1, max_length=64)]
Tags = Annotated[list[Annotated[str, Meta(min_length=1, max_length=32)]], Meta(max_length=32)]


class TextPart(msgspec.Struct, kw_only=True):
    type: Literal["text"]
    text: Annotated[str, Meta(max_length=256 * 1024)]


class InMessage(msgspec.Struct, kw_only=True):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Annotated[str, Meta(max_length=256 * 1024)] | Annotated[list[TextPart], Meta(max_length=64)] | None = None
    name: Annotated[str, Meta(max_length=64)] | None = None


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool = False


class MosaicOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``mosaic`` extension object: strategy parameters (docs/collaboration.md)."""

    params: Params = msgspec.field(default_factory=dict)


class _Sampling(msgspec.Struct, kw_only=True):
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    max_tokens: Annotated[int, Meta(ge=1, le=MAX_TOKENS_CAP)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: Stop | Annotated[list[Stop], Meta(max_length=4)] | None = None
    seed: Annotated[int, Meta(ge=0, le=2**63 - 1)] | None = None
    presence_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Meta(ge=-2.0, le=2.0)] | None = None
    user: Annotated[str, Meta(max_length=256)] | None = None
    # Mosaic extensions (the openai SDK passes them via ``extra_body``).
    tags: Tags | None = None
    timeout: Annotated[float, Meta(gt=0.0, le=3600.0)] | None = None
    mosaic: MosaicOptions | None = None


class ChatCompletionRequest(_Sampling, kw_only=True):
    messages: Annotated[list[InMessage], Meta(min_length=1, max_length=256)]
    max_completion_tokens: Annotated[int, Meta(ge=1, le=MAX_TOKENS_CAP)] | None = None
    logprobs: bool | None = None
    tools: list[object] | None = None
    response_format: dict[str, object] | None = None


class CompletionRequest(_Sampling, kw_only=True):
    prompt: (
        Annotated[str, Meta(max_length=256 * 1024)]
        | Annotated[list[Annotated[str, Meta(max_length=256 * 1024)]], Meta(min_length=1, max_length=1)]
    )
    echo: bool | None = None
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    suffix: str | None = None
    best_of: Annotated[int, Meta(ge=1, le=20)] | None = None


_PATH = re.compile(r"at `\$\.?([A-Za-z_][\w]*)")


def parse(body: bytes, kind: type[msgspec.Struct]):
    """Decode and validate a request body; raises :class:`ApiError` (400) naming the parameter."""
    try:
        request = msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _PATH.search(text)
        param = match.group(1) if match else None
        if "Object missing required field" in text:
            param = text.rsplit("`", 2)[-2] if text.count("`") >= 2 else param
            raise bad_request(f"Missing required parameter: {param!r}.", param, "missing_required_parameter") from None
        raise bad_request(f"Invalid value: {text}", param, "invalid_value") from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"The request body is not valid JSON: {exc}", None, "invalid_json") from None
    except UnicodeDecodeError as exc:
        # msgspec validates UTF-8 lazily, inside strings: a bad byte there is the client's error too.
        raise bad_request(f"The request body is not valid UTF-8: {exc.reason} at byte {exc.start}.", None,
                          "invalid_json") from None
    except RecursionError:
        # msgspec decodes nested values recursively, even in ignored fields (tools, response_format, ...).
        raise bad_request("The request body is nested too deeply.", None, "invalid_json") from None
    _check_supported(request)
    return request


def _unsupported(param: str, why: str) -> ApiError:
    return bad_request(f"Unsupported parameter {param!r}: {why}", param, "unsupported_parameter")


def _check_supported(req) -> None:
    if req.n not in (None, 1):
        raise _unsupported("n", "Mosaic returns one choice per request (n must be 1).")
    if req.stream_options is not None and not req.stream:
        raise bad_request("stream_options is only allowed when stream is true.", "stream_options")
    if isinstance(req, ChatCompletionRequest):
        if req.tools:
            raise _unsupported("tools", "tool calling is not supported.")
        if req.logprobs:
            raise _unsupported("logprobs", "log-probabilities are not returned by this API.")
        if req.response_format and req.response_format.get("type") not in (None, "text"):
            raise _unsupported("response_format", "only text responses are supported.")
        if req.max_tokens is not None and req.max_completion_tokens is not None:
            raise bad_request("Set max_tokens or max_completion_tokens, not both.", "max_completion_tokens")
    else:
        if req.echo:
            raise _unsupported("echo", "echoing the prompt is not supported.")
        if req.logprobs:
            raise _unsupported("logprobs", "log-probabilities are not returned by this API.")
        if req.suffix:
            raise _unsupported("suffix", "insertion is not supported.")
        if req.best_of not in (None, 1):
            raise _unsupported("best_of", "Mosaic returns one candidate (best_of must be 1).")


def _text(message: InMessage, index: int) -> str:
    if message.content is None:
        raise bad_request(f"messages[{index}].content is required.", f"messages[{index}].content")
    if isinstance(message.content, str):
        return message.content
    return "".join(part.text for part in message.content)


# OpenAI roles -> ours ("developer" is OpenAI's newer name for "system"); tool roles are refused.
_ROLES: dict[str, Literal["system", "user", "assistant"]] = {
    "system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def chat_messages(req: ChatCompletionRequest) -> tuple[ChatMessage, ...]:
    out = []
    for i, m in enumerate(req.messages):
        role = _ROLES.get(m.role)
        if role is None:
            raise _unsupported(f"messages[{i}].role", "tool messages are not supported.")
        out.append(ChatMessage(role=role, content=_text(m, i)))
    return tuple(out)


def to_query(req: ChatCompletionRequest | CompletionRequest, *, strategy: str, model: str | None,
             default_timeout: float) -> QueryRequest:
    """The Mosaic query for an OpenAI request (``model``: a pinned expert, or None for the strategy's choice)."""
    messages: tuple[ChatMessage, ...] | None = None
    prompt: str | None = None
    if isinstance(req, ChatCompletionRequest):
        max_tokens = req.max_completion_tokens or req.max_tokens or DEFAULT_CHAT_MAX_TOKENS
        messages = chat_messages(req)
    else:
        max_tokens = req.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS
        prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    stop = () if req.stop is None else ((req.stop,) if isinstance(req.stop, str) else tuple(req.stop))
    # No temperature from the client: greedy for a question with one answer, sampled for open-ended
    # writing (coordinator/decoding.py); OpenAI's implied 1.0 made small experts answer nonsense.
    last_user = next((m.content for m in reversed(messages) if m.role == "user"), "") if messages else prompt or ""
    temperature, top_p = fill_defaults(last_user, req.temperature, req.top_p)
    sampling = SamplingParams(
        max_new_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=stop,
        seed=req.seed,
    )
    return QueryRequest(request_id=new_id("q"), prompt=prompt, messages=messages, strategy=strategy,
                        tags=tuple(req.tags or ()), model=model, sampling=sampling,
                        timeout_s=min(req.timeout or default_timeout, 3600.0), stream=bool(req.stream),
                        params=dict(req.mosaic.params) if req.mosaic else {})


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


# ------------------------------------------------------------------------------------- responses


def finish_reason(reason: str) -> str:
    # OpenAI knows stop / length / content_filter / tool_calls; a cancelled generation stopped.
    return "length" if reason == "length" else "stop"


def provenance_json(result_or_list) -> list[dict[str, object]]:
    provs = result_or_list.provenance if isinstance(result_or_list, QueryResult) else result_or_list
    return [msgspec.to_builtins(p) for p in provs]


def usage_json(result: QueryResult) -> dict[str, int]:
    u = result.usage
    return {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "total_tokens": u.prompt_tokens + u.completion_tokens}


def mosaic_json(result: QueryResult) -> dict[str, object]:
    """The response's ``mosaic`` object: strategy, provenance and the full trace (with its digest)."""
    out: dict[str, object] = {"strategy": result.strategy, "provenance": provenance_json(result),
                              "seconds": result.usage.seconds,
                              # OpenAI's finish_reason has no word for it: "repetition" (a loop cut) is "stop" there.
                              "finish_reason": result.finish_reason}
    if result.trace is not None:
        out["trace"] = msgspec.to_builtins(result.trace)
        out["trace_digest"] = trace_digest(result.trace)
    return out


def chat_completion(cid: str, model: str, result: QueryResult) -> dict[str, object]:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                     "logprobs": None, "finish_reason": finish_reason(result.finish_reason)}],
        "usage": usage_json(result), "mosaic": mosaic_json(result),
    }


def text_completion(cid: str, model: str, result: QueryResult) -> dict[str, object]:
    return {
        "id": cid, "object": "text_completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "text": result.text, "logprobs": None,
                     "finish_reason": finish_reason(result.finish_reason)}],
        "usage": usage_json(result), "mosaic": mosaic_json(result),
    }


def chat_chunk(cid: str, model: str, created: int, delta: dict, finish: str | None = None,
               mosaic: dict | None = None) -> dict[str, object]:
    chunk: dict[str, object] = {
        "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    if mosaic is not None:
        chunk["mosaic"] = mosaic
    return chunk


def text_chunk(cid: str, model: str, created: int, text: str, finish: str | None = None,
               mosaic: dict | None = None) -> dict[str, object]:
    chunk: dict[str, object] = {
        "id": cid, "object": "text_completion", "created": created, "model": model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
    }
    if mosaic is not None:
        chunk["mosaic"] = mosaic
    return chunk
