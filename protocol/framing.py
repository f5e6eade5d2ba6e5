"""Length-prefixed framing: unsigned-varint length, then the payload.

The same framing as libp2p's msgio / multistream (unsigned varint, at most
9 bytes for 63-bit lengths).  The decoder checks the declared length against
its cap *before* buffering the body, so a peer announcing a 2**40-byte frame
costs us nothing.
"""

from __future__ import annotations

from .errors import DecodeError, MessageTooLarge

MAX_VARINT_BYTES = 9


def encode_varint(value: int) -> bytes:
    if value < 0:
        raise ValueError("varints are unsigned")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int] | None:
    """Return ``(value, bytes_used)``, or ``None`` if ``data`` ends mid-varint."""
    value = 0
    for i in range(MAX_VARINT_BYTES):
        if offset + i >= len(data):
            return None
        byte = data[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if i and byte == 0:
                raise DecodeError("varint is not minimally encoded")
            return value, i + 1
    raise DecodeError(f"varint longer than {MAX_VARINT_BYTES} bytes")


def encode_frame(payload: bytes, max_size: int) -> bytes:
    if len(payload) > max_size:
        raise MessageTooLarge(f"frame of {len(payload)} bytes exceeds cap {max_size}")
    return encode_varint(len(payload)) + payload


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, get whole frames out.

    Sans-IO: the caller owns the stream and decides what to do on errors.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        frames: list[bytes] = []
        while True:
            header = decode_varint(self._buf)
            if header is None:
                return frames
            length, used = header
            if length > self.max_size:
                raise MessageTooLarge(f"peer announced a {length}-byte frame; cap is {self.max_size}")
            if len(self._buf) < used + length:
                return frames
            frames.append(bytes(self._buf[used : used + length]))
            del self._buf[: used + length]

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a whole frame."""
        return len(self._buf)
