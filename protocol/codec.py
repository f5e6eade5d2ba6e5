"""msgpack encoding and strict decoding of protocol messages.

``decode`` turns *any* byte string into either a validated message or one of
the :mod:`protocol.errors` exceptions, never anything else: that is the
property the hypothesis fuzz tests check.
"""

from __future__ import annotations

from typing import TypeVar, overload

import msgspec

from .base import PROTOCOL_VERSION, Message
from .errors import (
    DecodeError,
    InvalidValue,
    MessageTooLarge,
    MissingField,
    ProtocolError,
    UnknownMessageType,
    UnsupportedVersion,
    WrongType,
)
from .messages import ALL_MESSAGE_TYPES
from .trace import Trace, digest

# One message never needs more than this; streams carry many messages.
MAX_MESSAGE_SIZE = 1024 * 1024

M = TypeVar("M", bound=Message)

_encoder = msgspec.msgpack.Encoder()
_BY_TAG: dict[str, type[Message]] = {str(cls.__struct_config__.tag): cls for cls in ALL_MESSAGE_TYPES}
_DECODERS: dict[type[Message], msgspec.msgpack.Decoder] = {
    cls: msgspec.msgpack.Decoder(cls) for cls in ALL_MESSAGE_TYPES
}


class _Envelope(msgspec.Struct):
    """Just enough of a message to route it: version and type tag."""

    v: int
    t: str


_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


@overload
def decode(data: bytes, expected: type[M], *, max_size: int = ...) -> M: ...
@overload
def decode(data: bytes, expected: tuple[type[Message], ...] | None = None, *, max_size: int = ...) -> Message: ...


def decode(data, expected=None, *, max_size=MAX_MESSAGE_SIZE):
    """Decode one message, checking size, version, type and every field.

    ``expected`` restricts which message types are acceptable here (a record
    handler must not accept an inference request); anything else raises
    :class:`UnknownMessageType`.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError("message must be bytes")
    if len(data) > max_size:
        raise MessageTooLarge(f"message of {len(data)} bytes exceeds cap {max_size}")
    try:
        envelope = _envelope_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _classify(exc, "envelope") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not a msgpack message: {exc}") from None
    if envelope.v != PROTOCOL_VERSION:
        raise UnsupportedVersion(f"protocol version {envelope.v!r}; this node speaks {PROTOCOL_VERSION}")
    cls = _BY_TAG.get(envelope.t)
    if cls is None:
        raise UnknownMessageType(f"unknown message type {envelope.t[:32]!r}")
    if expected is not None:
        allowed = expected if isinstance(expected, tuple) else (expected,)
        if cls not in allowed:
            names = ", ".join(c.__struct_config__.tag for c in allowed)
            raise UnknownMessageType(f"got {envelope.t!r} where one of [{names}] was expected")
    try:
        return _DECODERS[cls].decode(data)
    except msgspec.ValidationError as exc:
        raise _classify(exc, envelope.t) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise DecodeError(f"malformed {envelope.t!r} message: {exc}") from None
    except RecursionError:
        raise DecodeError("message nests too deeply") from None


def _classify(exc: msgspec.ValidationError, what: str) -> ProtocolError:
    """Map msgspec's validation message onto our exception types."""
    text = str(exc)
    detail = f"{what}: {text}"
    if "missing required field" in text:
        return MissingField(detail)
    if text.startswith("Expected `") and ", got `" in text:
        return WrongType(detail)
    return InvalidValue(detail)



def trace_digest(trace: Trace) -> str:
    """Digest of the trace's canonical encoding (sent as an HTTP header next to the trace)."""
    return digest(encode(trace))
