"""Content identifiers (CIDs) for IPFS blocks: sha2-256 multihashes, v0 and v1.

Only what Mosaic needs, written out so it is exact and dependency-free:

- multihash: ``0x12`` (sha2-256), ``0x20`` (32-byte digest), digest;
- CIDv0: base58btc of the multihash ("Qm..."), always dag-pb;
- CIDv1: ``varint(1) varint(codec) multihash``; text form multibase ``b`` + base32 lower,
  no padding ("bafy..." for dag-pb, "bafk..." for raw).  ``z`` (base58btc) is accepted on input.

Spec: https://github.com/multiformats/cid
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

import base58

from .errors import DecodeError, InvalidValue
from .framing import decode_varint, encode_varint

SHA2_256 = 0x12
DIGEST_SIZE = 32
DAG_PB = 0x70
RAW = 0x55
_CODECS = (DAG_PB, RAW)
_MH_PREFIX = bytes((SHA2_256, DIGEST_SIZE))
MAX_CID_TEXT = 128


@dataclass(frozen=True, slots=True)
class CID:
    """A sha2-256 CID.  Equality includes version and codec (as in IPFS)."""

    version: int
    codec: int
    digest: bytes

    def __post_init__(self) -> None:
        if self.version not in (0, 1):
            raise InvalidValue(f"CID version {self.version} is not 0 or 1")
        if self.codec not in _CODECS:
            raise InvalidValue(f"CID codec 0x{self.codec:x} is not dag-pb or raw")
        if self.version == 0 and self.codec != DAG_PB:
            raise InvalidValue("CIDv0 is always dag-pb")
        if len(self.digest) != DIGEST_SIZE:
            raise InvalidValue("sha2-256 digest must be 32 bytes")

    @property
    def multihash(self) -> bytes:
        return _MH_PREFIX + self.digest

    def to_bytes(self) -> bytes:
        """Binary form, as carried in dag-pb links and on the wire."""
        if self.version == 0:
            return self.multihash
        return encode_varint(1) + encode_varint(self.codec) + self.multihash

    def encode(self) -> str:
        """Canonical text form: base58btc for v0, base32 lower for v1 (what Kubo prints)."""
        if self.version == 0:
            return base58.b58encode(self.multihash).decode("ascii")
        return "b" + base64.b32encode(self.to_bytes()).decode("ascii").lower().rstrip("=")

    def __str__(self) -> str:
        return self.encode()

    def to_v1(self) -> CID:
        return CID(1, self.codec, self.digest)

    def verify(self, data: bytes | bytearray | memoryview) -> bool:
        """True if ``data`` hashes to this CID's digest."""
        return hashlib.sha256(data).digest() == self.digest


def cid_for_block(data: bytes | bytearray | memoryview, *, codec: int, version: int = 1) -> CID:
    return CID(version, codec, hashlib.sha256(data).digest())


def _parse_multihash(mh: bytes) -> bytes:
    if len(mh) != 2 + DIGEST_SIZE or mh[:2] != _MH_PREFIX:
        raise DecodeError("only sha2-256 multihashes are supported")
    return bytes(mh[2:])


def cid_from_bytes(data: bytes | bytearray | memoryview) -> CID:
    """Parse a binary CID (v0 multihash or v1) or raise :class:`DecodeError`."""
    data = bytes(data)
    if len(data) == 2 + DIGEST_SIZE and data[:2] == _MH_PREFIX:
        return CID(0, DAG_PB, data[2:])
    head = decode_varint(data)
    if head is None or head[0] != 1:
        raise DecodeError("not a CIDv0 multihash or a CIDv1")
    codec_head = decode_varint(data, head[1])
    if codec_head is None:
        raise DecodeError("truncated CID")
    codec, used = codec_head
    if codec not in _CODECS:
        raise DecodeError(f"unsupported CID codec 0x{codec:x}")
    return CID(1, codec, _parse_multihash(data[head[1] + used :]))


def parse_cid(text: str) -> CID:
    """Parse a CID's text form (``Qm...``, ``b...`` base32, ``z...`` base58btc)."""
    if not isinstance(text, str) or not 0 < len(text) <= MAX_CID_TEXT:
        raise DecodeError("CID text must be a short non-empty string")
    try:
        if len(text) == 46 and text.startswith("Qm"):
            return cid_from_bytes(base58.b58decode(text))
        if text[0] == "b":
            body = text[1:].upper()
            return cid_from_bytes(base64.b32decode(body + "=" * (-len(body) % 8)))
        if text[0] == "z":
            return cid_from_bytes(base58.b58decode(text[1:]))
    except (ValueError, binascii.Error) as exc:
        raise DecodeError(f"malformed CID {text[:20]!r}: {exc}") from None
    raise DecodeError(f"unsupported CID encoding {text[:20]!r}")
