"""Round trips and strict decoding of every message type."""

from __future__ import annotations

import msgspec
import pytest

import protocol as p
from protocol.framing import FrameDecoder, decode_varint, encode_frame, encode_varint

SAMPLES: list[p.Message] = [
    p.CapabilityRecord(peer_id="12D3KooWx", name="smol", seq=1, issued_at=10.0, ttl=30.0, tags=("math",),
                       adapters=(p.AdapterInfo(name="law", cid="bafy"),)),
    p.SignedRecord(payload=b"x", signature=b"s" * 64),
    p.RecordBatch(records=(p.SignedRecord(payload=b"x", signature=b"s" * 64),)),
    p.GenerateRequest(request_id="r1", prompt="hi", sampling=p.SamplingParams(max_new_tokens=4, stop=("\n",))),
    p.GenerateRequest(request_id="r2", messages=(p.ChatMessage(role="user", content="hi"),), adapter="law"),
    p.TokenChunk(request_id="r1", index=0, text="he", token_ids=(1, 2)),
    p.GenerateResult(request_id="r1", text="hello", finish_reason="stop",
                     usage=p.Usage(prompt_tokens=3, completion_tokens=2, seconds=0.5)),
    p.ScoreRequest(request_id="r3", prompt="2+2=", continuation="4"),
    p.ScoreResult(request_id="r3", token_ids=(19,), logprobs=(-0.1,)),
    p.NextTokenRequest(request_id="r4", prompt="2+2=", top_k=5),
    p.NextTokenResult(request_id="r4", token_ids=(19, 20), logprobs=(-0.1, -2.0), tokens=("4", "5")),
    p.Cancel(request_id="r1"),
    p.Queued(request_id="r1", position=3, waiting=5, running=8),
    p.Queued(request_id="r1", position=1, waiting=0, running=1, started=True),
    p.ErrorMessage(code="busy", message="queue full", request_id="r1"),
    p.QueryRequest(request_id="q1", prompt="why?", tags=("math",), model="mosaic/route"),
    p.QueryChunk(request_id="q1", index=0, text="be", provenance=p.Provenance(served_by="12D3KooWx", adapter="law")),
    p.QueryResult(request_id="q1", text="because", finish_reason="stop",
                  usage=p.Usage(prompt_tokens=3, completion_tokens=2, seconds=0.5),
                  provenance=(p.Provenance(served_by="12D3KooWx", model="smol"),)),
    p.QueryRequest(request_id="q2", prompt="why?", strategy="vote", params={"k": 4, "kind": "number", "grace_s": 0.5}),
    p.Trace(request_id="q2", strategy="vote", params={"k": 2}, decision="majority '4'",
            steps=(p.TraceStep(index=0, role="proposer", peer="12D3KooWx", output="4", answer="4", votes=2,
                               input_digest=p.digest("why?"), receipt=b"sig"),)),
    p.SessionOpen(session_id="s1", messages=(p.ChatMessage(role="user", content="hi"),), adapter="law", top_k=8),
    p.SessionAppend(session_id="s1", token_ids=(42,)),
    p.SessionNext(session_id="s1", position=7, token_ids=(19, 20), logprobs=(-0.1, -2.0), text="4",
                  eos_token_ids=(2,), idle_timeout_s=30.0),
    p.SessionClose(session_id="s1"),
    p.SessionClosed(session_id="s1", usage=p.Usage(prompt_tokens=3, completion_tokens=2, seconds=0.5),
                    receipt=p.SignedReceipt(payload=b"r", signature=b"s" * 64)),
]


def test_every_message_type_has_a_sample():
    assert {type(m) for m in SAMPLES} == set(p.ALL_MESSAGE_TYPES)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    data = p.encode(message)
    assert p.decode(data) == message
    assert p.decode(data, type(message)) == message


def _raw(**fields) -> bytes:
    return msgspec.msgpack.encode(fields)


def test_unknown_version_is_rejected():
    with pytest.raises(p.UnsupportedVersion):
        p.decode(_raw(v=2, t="cancel", request_id="x"))


def test_unknown_type_is_rejected():
    with pytest.raises(p.UnknownMessageType):
        p.decode(_raw(v=1, t="launch_missiles"))


def test_unexpected_type_is_rejected():
    with pytest.raises(p.UnknownMessageType):
        p.decode(p.encode(p.Cancel(request_id="x")), p.GenerateRequest)


def test_missing_field():
    with pytest.raises(p.MissingField):
        p.decode(_raw(v=1, t="cancel"))


def test_wrong_type():
    with pytest.raises(p.WrongType):
        p.decode(_raw(v=1, t="cancel", request_id=7))


@pytest.mark.parametrize(
    "sampling",
    [{"max_new_tokens": -1}, {"max_new_tokens": 0}, {"temperature": 9.0}, {"top_p": 0.0}, {"stop": ["x" * 65]}],
)
def test_out_of_range_sampling(sampling):
    with pytest.raises(p.InvalidValue):
        p.decode(_raw(v=1, t="generate", request_id="r", prompt="x", sampling=sampling))


def test_prompt_xor_messages():
    with pytest.raises(p.InvalidValue):
        p.decode(_raw(v=1, t="generate", request_id="r"))
    with pytest.raises(p.InvalidValue):
        p.decode(_raw(v=1, t="generate", request_id="r", prompt="x", messages=[{"role": "user", "content": "y"}]))


def test_unknown_fields_are_ignored_for_forward_compatibility():
    assert p.decode(_raw(v=1, t="cancel", request_id="x", future_field=1)) == p.Cancel(request_id="x")


def test_oversized_message_rejected_before_parsing():
    with pytest.raises(p.MessageTooLarge):
        p.decode(b"\x00" * 2048, max_size=1024)


def test_not_msgpack():
    with pytest.raises(p.DecodeError):
        p.decode(b"\xc1")
    with pytest.raises(p.ProtocolError):
        p.decode(b"\x93\x01\x02\x03")  # an array, not a map


def test_varint_round_trip():
    for n in (0, 1, 127, 128, 300, 2**32, 2**62):
        encoded = encode_varint(n)
        assert decode_varint(encoded) == (n, len(encoded))


def test_frame_decoder_reassembles_split_frames():
    frames = [b"a", b"", b"x" * 300]
    wire = b"".join(encode_frame(f, 1024) for f in frames)
    decoder = FrameDecoder(max_size=1024)
    out: list[bytes] = []
    for i in range(len(wire)):
        out += decoder.feed(wire[i : i + 1])
    assert out == frames
    assert decoder.pending == 0


def test_frame_decoder_rejects_huge_declared_length_without_buffering():
    decoder = FrameDecoder(max_size=1024)
    with pytest.raises(p.MessageTooLarge):
        decoder.feed(encode_varint(2**40))


def test_frame_decoder_rejects_overlong_varint():
    with pytest.raises(p.DecodeError):
        FrameDecoder(max_size=1024).feed(b"\xff" * 11)


def test_encode_frame_enforces_cap():
    with pytest.raises(p.MessageTooLarge):
        encode_frame(b"x" * 10, max_size=9)


def test_queued_keepalive_is_wire_compatible_both_ways():
    """``started`` (the running request's keep-alive) came later: old and new peers still agree."""
    class OldQueued(msgspec.Struct, frozen=True, kw_only=True, tag="queued", tag_field="t"):
        v: int
        request_id: str
        position: int
        waiting: int
        running: int

    new = p.Queued(request_id="r1", position=1, waiting=0, running=2, started=True)
    old = msgspec.msgpack.decode(p.encode(new), type=OldQueued)  # an old client ignores the field
    assert (old.position, old.running) == (1, 2)
    old_frame = _raw(t="queued", v=p.PROTOCOL_VERSION, request_id="r1", position=2, waiting=3, running=1)
    assert p.decode(old_frame) == p.Queued(request_id="r1", position=2, waiting=3, running=1, started=False)
