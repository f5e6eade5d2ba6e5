"""Random frames on ``/mosaic/infer/1``: always one typed ErrorMessage back, never a crash or a hang."""

from __future__ import annotations

import msgspec
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.net.streams import open_stream
from protocol import INFER_PROTOCOL, ErrorMessage, Message, NextTokenResult, ScoreResult, TokenChunk
from tests.expert.fixtures import expert_pair
from tests.hostile.test_infer_bad_requests import framed, still_serves


async def first_reply(host, peer_id: str, payload: bytes) -> Message:
    stream = await open_stream(host, peer_id, INFER_PROTOCOL)
    try:
        await stream._stream.write(payload)
        return await stream.receive()
    finally:
        await stream.reset()  # a (rarely) valid generation is cancelled by the reset

# Message-shaped maps (right envelope, random fields) reach deeper than random bytes.
_values = st.one_of(st.none(), st.integers(-2**40, 2**40), st.floats(allow_nan=True), st.text(max_size=40),
                    st.binary(max_size=40), st.lists(st.integers(-5, 5), max_size=4))
_requests = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 2]), "t": st.sampled_from(["generate", "score", "next_token", "cancel", "zzz"])},
    optional={"request_id": st.text(max_size=80), "prompt": _values, "adapter": _values,
              "sampling": st.dictionaries(st.sampled_from(["max_new_tokens", "temperature", "top_p", "stop", "seed"]),
                                          _values, max_size=3),
              "top_k": _values, "continuation": _values, "timeout_s": _values},
).map(msgspec.msgpack.encode)
_payloads = st.one_of(st.binary(max_size=200), _requests)


async def test_random_frames_get_typed_errors(base_expert):
    replies: list[Message] = []

    with trio.fail_after(110):
        async with expert_pair(base_expert) as (service, server, peer):

            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
            @given(payload=_payloads)
            def check(payload: bytes) -> None:
                # hypothesis drives a sync function; each example runs on our trio loop.
                replies.append(trio.from_thread.run(first_reply, peer.host, server.peer_id, framed(payload)))

            await trio.to_thread.run_sync(check)
            assert await still_serves(peer.host, server.peer_id) in ("stop", "length")
    # Random input that happens to be a valid request is served; everything else is a typed error.
    assert all(isinstance(r, (ErrorMessage, TokenChunk, ScoreResult, NextTokenResult)) for r in replies)
    codes = {r.code for r in replies if isinstance(r, ErrorMessage)}
    assert codes and codes <= {"bad_request", "too_large", "not_found", "timeout"}, codes
