"""Decoding of the /mosaic/query/1 messages: round trips, caps and cross-field rules."""

from __future__ import annotations

import msgspec
import pytest

import protocol as p

PROV = p.Provenance(served_by="12D3KooWexpert", expert="smol-math", model="SmolLM2-135M", adapter="math")

SAMPLES: list[p.Message] = [
    p.QueryRequest(request_id="q1", prompt="2+2?", tags=("math",), sampling=p.SamplingParams(max_new_tokens=8)),
    p.QueryRequest(request_id="q2", messages=(p.ChatMessage(role="user", content="hi"),), model="mosaic/route",
                   stream=False, timeout_s=5.0),
    p.QueryChunk(request_id="q1", index=0, text="4", provenance=PROV),
    p.QueryResult(request_id="q1", text="4", finish_reason="stop",
                  usage=p.Usage(prompt_tokens=3, completion_tokens=1, seconds=0.2), provenance=(PROV,)),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    data = p.encode(message)
    assert p.decode(data, type(message)) == message


def test_query_types_are_registered():
    assert {p.QueryRequest, p.QueryChunk, p.QueryResult} <= set(p.ALL_MESSAGE_TYPES)
    assert p.QUERY_PROTOCOL == "/mosaic/query/1"


def _raw(**fields) -> bytes:
    return msgspec.msgpack.encode({"v": 1, **fields})


def test_query_needs_exactly_one_of_prompt_and_messages():
    with pytest.raises(p.ProtocolError):
        p.decode(_raw(t="query", request_id="q"))
    with pytest.raises(p.ProtocolError):
        p.decode(_raw(t="query", request_id="q", prompt="a", messages=[{"role": "user", "content": "b"}]))


@pytest.mark.parametrize(
    "fields",
    [
        {"tags": ["x" * 33]},  # tag over its cap
        {"tags": ["t"] * 33},  # too many tags
        {"tags": [""]},
        {"model": ""},
        {"strategy": ""},
        {"timeout_s": 0},
        {"timeout_s": 1e9},
        {"sampling": {"max_new_tokens": 0}},
        {"sampling": {"temperature": -1.0}},
    ],
)
def test_query_caps(fields):
    with pytest.raises(p.InvalidValue):
        p.decode(_raw(t="query", request_id="q", prompt="hi", **fields))


def test_query_result_rejects_unknown_finish_reason():
    data = _raw(t="query_result", request_id="q", text="", finish_reason="exploded",
                usage={"prompt_tokens": 0, "completion_tokens": 0, "seconds": 0.0})
    with pytest.raises(p.InvalidValue):
        p.decode(data)


def test_chunk_requires_provenance():
    with pytest.raises(p.MissingField):
        p.decode(_raw(t="query_chunk", request_id="q", index=0, text="x"))


def test_a_query_is_not_accepted_where_generate_is_expected():
    with pytest.raises(p.UnknownMessageType):
        p.decode(p.encode(SAMPLES[0]), p.GenerateRequest)
