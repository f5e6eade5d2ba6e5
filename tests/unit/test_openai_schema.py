"""OpenAI request validation and translation to Mosaic queries (pure, no server)."""

from __future__ import annotations

import json

import msgspec
import pytest

import protocol as p
from node.api import openai_schema as oai
from node.api.errors import ApiError, from_code


def chat(**fields) -> bytes:
    body = {"model": "mosaic/route", "messages": [{"role": "user", "content": "hi"}], **fields}
    return json.dumps(body).encode()


def parse_chat(body: bytes) -> oai.ChatCompletionRequest:
    return oai.parse(body, oai.ChatCompletionRequest)


def test_minimal_chat_request_becomes_a_query():
    req = parse_chat(chat(max_tokens=12, temperature=0, stop="\n", seed=7, tags=["math"]))
    q = oai.to_query(req, strategy="route", model=None, default_timeout=30.0)
    assert q.messages == (p.ChatMessage(role="user", content="hi"),) and q.prompt is None
    assert q.sampling == p.SamplingParams(max_new_tokens=12, temperature=0.0, stop=("\n",), seed=7)
    assert q.tags == ("math",) and q.timeout_s == 30.0 and q.stream is False
    assert p.decode(p.encode(q), p.QueryRequest) == q  # the query is wire-valid


def test_content_parts_and_developer_role():
    body = json.dumps({"model": "m", "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]}).encode()
    q = oai.to_query(parse_chat(body), strategy="route", model="m", default_timeout=5)
    assert q.messages == (p.ChatMessage(role="system", content="be brief"), p.ChatMessage(role="user", content="ab"))
    assert q.model == "m"


def test_max_completion_tokens_and_defaults():
    q = oai.to_query(parse_chat(chat(max_completion_tokens=9)), strategy="route", model=None, default_timeout=5)
    assert q.sampling.max_new_tokens == 9
    q = oai.to_query(parse_chat(chat()), strategy="route", model=None, default_timeout=5)
    # No temperature from the client: greedy for a question with one answer (coordinator/decoding.py).
    assert q.sampling.max_new_tokens == oai.DEFAULT_CHAT_MAX_TOKENS and q.sampling.temperature == 0.0


def test_omitted_sampling_is_greedy_for_questions_and_sampled_for_open_ended_writing():
    def sampling(text: str, **fields):
        body = {"model": "mosaic/route", "messages": [{"role": "user", "content": text}], **fields}
        return oai.to_query(parse_chat(json.dumps(body).encode()), strategy="route", model=None,
                            default_timeout=5).sampling

    assert (sampling("What is 12 + 30?").temperature, sampling("What is 12 + 30?").top_p) == (0.0, 1.0)
    story = sampling("Write a short story about a lighthouse keeper.")
    assert (story.temperature, story.top_p) == (0.7, 0.9)
    # What the client sends always wins.
    assert sampling("What is 12 + 30?", temperature=1.0).temperature == 1.0
    assert sampling("Write a poem", temperature=0.2, top_p=0.5).top_p == 0.5
    completion = oai.parse(json.dumps({"model": "mosaic/route", "prompt": "2+2="}).encode(), oai.CompletionRequest)
    assert oai.to_query(completion, strategy="route", model=None, default_timeout=5).sampling.temperature == 0.0


def test_completion_prompt_string_or_single_list():
    for prompt in ("2+2=", ["2+2="]):
        req = oai.parse(json.dumps({"model": "m", "prompt": prompt}).encode(), oai.CompletionRequest)
        q = oai.to_query(req, strategy="route", model=None, default_timeout=5)
        assert q.prompt == "2+2=" and q.sampling.max_new_tokens == oai.DEFAULT_COMPLETION_MAX_TOKENS


@pytest.mark.parametrize(
    "body, param, code",
    [
        (b"{", None, "invalid_json"),
        (b"\xff\xfe", None, "invalid_json"),
        (b"[]", None, "invalid_value"),
        (json.dumps({"model": "m"}).encode(), "messages", "missing_required_parameter"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), "model", "missing_required_parameter"),
        (chat(messages=[]), "messages", "invalid_value"),
        (chat(max_tokens=-1), "max_tokens", "invalid_value"),
        (chat(max_tokens=0), "max_tokens", "invalid_value"),
        (chat(max_tokens=10**6), "max_tokens", "invalid_value"),
        (chat(max_tokens="many"), "max_tokens", "invalid_value"),
        (chat(temperature=2.5), "temperature", "invalid_value"),
        (chat(temperature=-0.1), "temperature", "invalid_value"),
        (chat(top_p=0), "top_p", "invalid_value"),
        (chat(n=2), "n", "unsupported_parameter"),
        (chat(tools=[{"type": "function"}]), "tools", "unsupported_parameter"),
        (chat(logprobs=True), "logprobs", "unsupported_parameter"),
        (chat(stop=["a"] * 5), "stop", "invalid_value"),
        (chat(stream_options={"include_usage": True}), "stream_options", None),
        (chat(messages=[{"role": "wizard", "content": "x"}]), "messages", "invalid_value"),
        (chat(max_tokens=5, max_completion_tokens=5), "max_completion_tokens", None),
        (chat(tags=["x" * 40]), "tags", "invalid_value"),
    ],
)
def test_bad_chat_requests_name_the_parameter(body, param, code):
    with pytest.raises(ApiError) as info:
        parse_chat(body)
    err = info.value
    assert err.status == 400 and err.type == "invalid_request_error"
    assert err.param == param and err.code == code
    payload = json.loads(err.body())
    assert set(payload["error"]) == {"message", "type", "param", "code"} and payload["error"]["message"]


def test_tool_messages_are_rejected_at_translation():
    req = parse_chat(chat(messages=[{"role": "tool", "content": "x"}]))
    with pytest.raises(ApiError) as info:
        oai.to_query(req, strategy="route", model=None, default_timeout=5)
    assert info.value.status == 400


@pytest.mark.parametrize("fields", [{"echo": True}, {"n": 3}, {"best_of": 2}, {"suffix": "x"}, {"logprobs": 2}])
def test_bad_completion_requests(fields):
    with pytest.raises(ApiError) as info:
        oai.parse(json.dumps({"model": "m", "prompt": "x", **fields}).encode(), oai.CompletionRequest)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "code, status", [("busy", 503), ("timeout", 504), ("not_found", 404), ("unavailable", 503),
                     ("bad_request", 400), ("too_large", 413), ("internal", 500), ("weird", 500)],
)
def test_protocol_codes_map_to_http_statuses(code, status):
    err = from_code(code, "m")
    assert err.status == status
    assert msgspec.json.decode(err.body())["error"]["message"] == "m"
    if code == "busy":
        assert err.retry_after is not None


def test_response_bodies_carry_provenance_and_usage():
    prov = p.Provenance(served_by="12D3KooWB", expert="smol", model="SmolLM2", adapter="math")
    result = p.QueryResult(request_id="q", text="4", finish_reason="length",
                           usage=p.Usage(prompt_tokens=5, completion_tokens=1, seconds=0.3), provenance=(prov,))
    body = oai.chat_completion("chatcmpl-1", "mosaic/route", result)
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "4"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}
    assert body["mosaic"]["provenance"][0]["served_by"] == "12D3KooWB"
    text = oai.text_completion("cmpl-1", "smol", result)
    assert text["choices"][0]["text"] == "4" and text["object"] == "text_completion"


HI = b'"messages": [{"role": "user", "content": "hi"}]'
DEEP = b"[" * 1500 + b"]" * 1500
DEEP_OBJECT = b'{"a": ' * 1500 + b"1" + b"}" * 1500


@pytest.mark.parametrize("body", [
    b'{"model": "mosaic/route", "messages": [{"role": "user", "content": "hi \xff\xfe there"}]}',
    b'{"model": "mosaic/route", ' + HI + b', "user": "\xc3\x28"}',
    b'{"model": "mosaic/route", ' + HI + b', "ignored_field": ' + DEEP + b"}",
    b'{"model": "mosaic/route", ' + HI + b', "ignored_field": ' + DEEP_OBJECT + b"}",
    b'{"model": "mosaic/route", ' + HI + b', "tools": ' + DEEP + b"}",
    b'{"model": "mosaic/route", ' + HI + b', "response_format": {"type": "text", "schema": ' + DEEP + b"}}",
    b'{"model": "mosaic/route", ' + HI + b', "response_format": ' + DEEP_OBJECT + b"}",
], ids=["utf8-in-content", "utf8-in-user", "deep-ignored", "deep-object-ignored", "deep-tools",
        "deep-response-format", "deep-object-response-format"])
def test_undecodable_text_and_deep_nesting_are_400(body):
    """Invalid UTF-8 inside a JSON string and 1000+ levels of nesting anywhere: a 400, never a 500."""
    with pytest.raises(ApiError) as err:
        parse_chat(body)
    assert err.value.status == 400 and err.value.code == "invalid_json"


def test_tiny_temperature_and_top_p_pass_validation_and_stay_wire_valid():
    req = parse_chat(chat(temperature=1e-300, top_p=5e-324))
    q = oai.to_query(req, strategy="route", model=None, default_timeout=30.0)
    assert p.decode(p.encode(q), p.QueryRequest) == q
    assert q.sampling.greedy  # below protocol.GREEDY_TEMPERATURE sampling is greedy decoding


def test_a_loop_cut_is_stop_to_openai_clients_and_repetition_in_the_mosaic_object():
    result = p.QueryResult(request_id="q", text="Paris.", finish_reason="repetition",
                           usage=p.Usage(prompt_tokens=5, completion_tokens=40, seconds=0.3), provenance=())
    assert p.decode(p.encode(result), p.QueryResult).finish_reason == "repetition"  # a wire value
    body = oai.chat_completion("chatcmpl-1", "mosaic/route", result)
    assert body["choices"][0]["finish_reason"] == "stop" and body["mosaic"]["finish_reason"] == "repetition"
