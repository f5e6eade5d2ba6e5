"""Bad input to ``/mosaic/infer/1``: every case gets a typed ErrorMessage and the expert keeps serving."""

from __future__ import annotations

import dataclasses
from contextlib import aclosing

import msgspec
import trio

from node.expert.remote import client
from node.expert.serve.local import ExpertError
from node.net.streams import open_stream
from protocol import (
    INFER_PROTOCOL,
    MAX_MESSAGE_SIZE,
    Cancel,
    ErrorMessage,
    GenerateRequest,
    GenerateResult,
    SamplingParams,
    TokenChunk,
    encode,
)
from protocol.framing import encode_varint
from tests.expert.fixtures import expert_pair


async def raw_exchange(host, peer_id: str, payload: bytes) -> ErrorMessage:
    """Send raw bytes on a fresh infer stream; return the expert's one reply."""
    stream = await open_stream(host, peer_id, INFER_PROTOCOL)
    try:
        await stream._stream.write(payload)  # bypass our own encoder: this is the hostile part
        reply = await stream.receive()
    finally:
        await stream.reset()
    assert isinstance(reply, ErrorMessage), reply
    return reply


def framed(body: bytes) -> bytes:
    return encode_varint(len(body)) + body


async def still_serves(host, peer_id: str) -> str:
    request = GenerateRequest(request_id="ok", prompt="Hello", sampling=SamplingParams(max_new_tokens=3))
    async with aclosing(client.generate(host, peer_id, request)) as events:
        async for message in events:
            if isinstance(message, GenerateResult):
                return message.finish_reason
    raise AssertionError("no result")


async def test_bad_requests_get_clear_errors_and_the_node_keeps_serving(base_expert):
    small_context = dataclasses.replace(base_expert, max_context=64)
    with trio.fail_after(90):
        async with expert_pair(small_context) as (service, server, peer):
            host, pid = peer.host, server.peer_id

            unknown = GenerateRequest(request_id="a", prompt="hi", adapter="does-not-exist")
            try:
                await anext(aiter(client.generate(host, pid, unknown)))
            except ExpertError as exc:
                assert exc.code == "not_found" and "does-not-exist" in exc.message
            else:
                raise AssertionError("unknown adapter accepted")

            # msgspec Structs do not validate on construction, so this encodes a real -1 on the wire.
            negative = GenerateRequest(request_id="b", prompt="hi", sampling=SamplingParams(max_new_tokens=-1))
            reply = await raw_exchange(host, pid, framed(encode(negative)))
            assert reply.code == "bad_request" and "max_new_tokens" in reply.message

            too_long = GenerateRequest(request_id="c", prompt="word " * 200)
            reply = await raw_exchange(host, pid, framed(encode(too_long)))
            assert reply.code == "too_large" and "context" in reply.message and reply.request_id == "c"

            # A frame header announcing more than the cap is refused before the body is read.
            reply = await raw_exchange(host, pid, encode_varint(MAX_MESSAGE_SIZE + 1) + b"x" * 1024)
            assert reply.code == "too_large"

            reply = await raw_exchange(host, pid, framed(b"\xc1 not msgpack at all"))
            assert reply.code == "bad_request"

            # A message that is valid but not a request (the stream must start with one).
            reply = await raw_exchange(host, pid, framed(encode(Cancel(request_id="x"))))
            assert reply.code == "bad_request"

            # Neither prompt nor messages.
            body = msgspec.msgpack.encode({"v": 1, "t": "generate", "request_id": "d"})
            reply = await raw_exchange(host, pid, framed(body))
            assert reply.code == "bad_request"

            assert await still_serves(host, pid) in ("stop", "length")
            assert service.worker.active == 0


async def test_garbage_after_the_request_cancels_the_generation(base_expert):
    with trio.fail_after(60):
        async with expert_pair(base_expert) as (service, server, peer):
            stream = await open_stream(peer.host, server.peer_id, INFER_PROTOCOL)
            await stream.send(GenerateRequest(request_id="g", prompt="Count to one thousand:",
                                              sampling=SamplingParams(max_new_tokens=1000)))
            assert isinstance(await stream.receive(), TokenChunk)
            await stream._stream.write(framed(b"\xc1garbage"))
            messages = []
            try:
                while True:
                    messages.append(await stream.receive())
            except Exception:  # the expert answers then closes (or resets) the stream
                pass
            await stream.reset()
            errors = [m for m in messages if isinstance(m, ErrorMessage)]
            assert errors and errors[-1].code == "bad_request"
            with trio.fail_after(5):
                while service.worker.active:
                    await trio.sleep(0.02)
            assert await still_serves(peer.host, server.peer_id) in ("stop", "length")
