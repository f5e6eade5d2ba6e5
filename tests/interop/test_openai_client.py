"""The official ``openai`` Python client against a node's HTTP API on a 3-node cluster.

The HTTP node serves no model (ExpertConfig disabled): every answer must come
from another peer's expert, and the provenance (headers and body) must name it.
The sync client runs in a worker thread so the cluster keeps running on the trio loop.
"""

from __future__ import annotations

import openai
import pytest
import trio

from node.config import HttpConfig
from tests.cluster.test_query import expert_cluster

MESSAGES = [{"role": "user", "content": "Name a primary colour."}]


def client(url: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=60, **kw)


async def test_openai_client_gets_answers_from_remote_experts(base_expert, adapter_expert):
    with trio.fail_after(100):
        async with expert_cluster(base_expert, adapter_expert, http=HttpConfig(listen="127.0.0.1:0")) as c:
            api = client(c.http.url)
            remote = {c.base.peer_id, c.noisy.peer_id}

            models = await trio.to_thread.run_sync(lambda: api.models.list())
            by_id = {m.id: m for m in models.data}
            # Every expert of the network (its name and name/adapter), plus the working strategy.
            assert {"node-1", "node-2", "node-2/noisy", "mosaic/route"} <= set(by_id)
            assert "node-0" not in by_id  # the HTTP node serves no model
            assert by_id["node-1"].owned_by == c.base.peer_id
            assert by_id["node-2/noisy"].model_extra["mosaic"]["peers"] == [c.noisy.peer_id]

            # Non-streaming chat through the routing strategy.
            raw = await trio.to_thread.run_sync(lambda: api.chat.completions.with_raw_response.create(
                model="mosaic/route", messages=MESSAGES, max_tokens=8, temperature=0))
            reply = raw.parse()
            served_by = raw.headers["x-mosaic-served-by"]
            assert served_by in remote and served_by != c.coordinator.peer_id
            assert reply.choices[0].message.role == "assistant" and reply.choices[0].message.content.strip()
            assert reply.choices[0].finish_reason in ("stop", "length")
            assert 0 < reply.usage.completion_tokens <= 8
            assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
            (prov,) = reply.model_extra["mosaic"]["provenance"]
            assert prov["served_by"] == served_by and prov["model"] == raw.headers["x-mosaic-model"]

            # Streaming chat, routed by tag to node 1; provenance in headers and every chunk.
            def stream_chat():
                with api.chat.completions.with_streaming_response.create(
                        model="mosaic/route", messages=MESSAGES, max_tokens=8, temperature=0, stream=True,
                        stream_options={"include_usage": True}, extra_body={"tags": ["n1"]}) as response:
                    return dict(response.headers), list(response.parse())

            headers, chunks = await trio.to_thread.run_sync(stream_chat)
            assert headers["x-mosaic-served-by"] == c.base.peer_id and headers["x-mosaic-expert"] == "node-1"
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            assert text.strip()
            assert chunks[0].choices[0].delta.role == "assistant"
            finals = [ch for ch in chunks if ch.choices and ch.choices[0].finish_reason]
            assert len(finals) == 1 and finals[0].model_extra["mosaic"]["provenance"][0]["served_by"] == c.base.peer_id
            assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 8
            # Greedy: the streamed text equals the non-streamed answer of the same expert.
            same = await trio.to_thread.run_sync(lambda: api.chat.completions.create(
                model="node-1", messages=MESSAGES, max_tokens=8, temperature=0))
            assert same.choices[0].message.content == text

            # Completions, pinned to the adapter model, streamed and not.
            raw = await trio.to_thread.run_sync(lambda: api.completions.with_raw_response.create(
                model="node-2/noisy", prompt="The sky is", max_tokens=6, temperature=0))
            assert raw.headers["x-mosaic-served-by"] == c.noisy.peer_id and raw.headers["x-mosaic-adapter"] == "noisy"
            completion = raw.parse()
            assert completion.object == "text_completion" and 0 < completion.usage.completion_tokens <= 6
            assert completion.model_extra["mosaic"]["provenance"][0]["adapter"] == "noisy"

            def stream_completion():
                return list(api.completions.create(model="node-1", prompt="The sky is", max_tokens=6, temperature=0,
                                                   stream=True))

            pieces = await trio.to_thread.run_sync(stream_completion)
            streamed = "".join(p.choices[0].text for p in pieces)
            plain = await trio.to_thread.run_sync(lambda: api.completions.create(
                model="node-1", prompt="The sky is", max_tokens=6, temperature=0))
            assert streamed == plain.choices[0].text and streamed.strip()

            # Typed errors surface as the SDK's exception classes.
            with pytest.raises(openai.NotFoundError) as info:
                await trio.to_thread.run_sync(lambda: api.chat.completions.create(model="gpt-4", messages=MESSAGES))
            assert info.value.code == "model_not_found"
            with pytest.raises(openai.BadRequestError) as info:
                await trio.to_thread.run_sync(lambda: api.chat.completions.create(
                    model="mosaic/route", messages=MESSAGES, n=2))
            assert info.value.param == "n"


async def test_openai_client_with_bearer_token(base_expert, adapter_expert):
    with trio.fail_after(100):
        http = HttpConfig(listen="127.0.0.1:0", token="s3cret")
        async with expert_cluster(base_expert, adapter_expert, http=http) as c:
            with pytest.raises(openai.AuthenticationError):
                await trio.to_thread.run_sync(lambda: client(c.http.url, api_key="wrong").models.list())
            reply = await trio.to_thread.run_sync(lambda: client(c.http.url, api_key="s3cret").chat.completions.create(
                model="mosaic/route", messages=MESSAGES, max_tokens=4, temperature=0))
            served = reply.model_extra["mosaic"]["provenance"][0]["served_by"]
            assert served in {c.base.peer_id, c.noisy.peer_id}
