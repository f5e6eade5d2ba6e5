"""Hypothesis fuzzing: decoding arbitrary bytes never raises anything but ProtocolError."""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol as p
from protocol.framing import FrameDecoder
from tests.unit.test_protocol_codec import SAMPLES

TAGS = [cls.__struct_config__.tag for cls in p.ALL_MESSAGE_TYPES]

# Values of every msgpack type, nested: what a hostile peer can put in a field.
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True), st.text(max_size=80), st.binary(max_size=80),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=12), inner, max_size=4)),
                      max_leaves=12)
FIELD_NAMES = sorted({f for cls in p.ALL_MESSAGE_TYPES for f in cls.__struct_fields__} | {"sampling", "usage"})


@st.composite
def near_valid_messages(draw) -> bytes:
    """Maps with a real version and tag and fields drawn from real field names."""
    fields = draw(st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=8))
    fields["v"] = draw(st.sampled_from([1, 1, 1, 0, 2, "1", None]))
    fields["t"] = draw(st.sampled_from(TAGS + ["nope", 3]))
    return msgspec.msgpack.encode(fields)


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _decode_or_protocol_error(data: bytes) -> None:
    try:
        message = p.decode(data)
    except p.ProtocolError:
        return
    # Whatever decoded must re-encode and decode to itself (it is a well-formed message).
    assert p.decode(p.encode(message)) == message


@SETTINGS
@given(st.binary(max_size=512))
def test_random_bytes(data):
    _decode_or_protocol_error(data)


@SETTINGS
@given(near_valid_messages())
def test_near_valid_messages(data):
    _decode_or_protocol_error(data)


@SETTINGS
@given(st.sampled_from(SAMPLES), st.data())
def test_mutated_valid_messages(sample, data):
    raw = bytearray(p.encode(sample))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    _decode_or_protocol_error(bytes(raw))


@SETTINGS
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_frame_decoder_never_crashes(chunks):
    decoder = FrameDecoder(max_size=256)
    try:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                assert len(frame) <= 256
    except p.ProtocolError:
        pass


@SETTINGS
@given(st.binary(max_size=300), st.binary(min_size=64, max_size=64))
def test_signed_record_verification_never_crashes(payload, signature):
    try:
        p.verify_record(p.SignedRecord(payload=payload, signature=signature), now=1.8e9)
    except p.ProtocolError:
        pass
