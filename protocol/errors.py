"""The exceptions raised on bad input.

Every decoder and verifier in this package raises only subclasses of
:class:`ProtocolError`, so a handler can catch one type, answer the remote peer
with a typed error message and keep serving (h11 style: a small hierarchy of
explicit errors at the edge where bad input enters).
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class: the bytes or the message violate the Mosaic wire protocol."""


class DecodeError(ProtocolError):
    """The bytes are not a msgpack map of the expected shape."""


class UnsupportedVersion(ProtocolError):
    """The message carries a protocol version this implementation does not speak."""


class UnknownMessageType(ProtocolError):
    """The message type tag is not one we know, or not the one expected here."""


class MissingField(ProtocolError):
    """A required field is absent."""


class WrongType(ProtocolError):
    """A field has the wrong type."""


class InvalidValue(ProtocolError):
    """A field has the right type but a value outside its allowed range."""


class MessageTooLarge(ProtocolError):
    """A frame or message exceeds its size cap (checked before allocating)."""


class BadSignature(ProtocolError):
    """A signature does not verify against the claimed peer's public key."""


class InvalidPeerId(ProtocolError):
    """A peer id is malformed or does not embed an Ed25519 public key."""


class ExpiredRecord(ProtocolError):
    """A signed record is past its issue time plus TTL (or issued in the future)."""


class ReplayedRecord(ProtocolError):
    """A signed record is older (lower sequence number) than one already accepted."""
