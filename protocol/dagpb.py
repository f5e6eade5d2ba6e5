"""dag-pb nodes and UnixFS ``Data`` messages: a tiny, byte-exact protobuf codec.

The encoders reproduce go-merkledag / go-unixfs output byte for byte, which is what
makes our CIDs equal to Kubo's:

- ``PBNode``: every ``Links`` entry (field 2) first, then ``Data`` (field 1)
  (the dag-pb spec's canonical order, as go-codec-dagpb writes it);
- ``PBLink``: ``Hash`` (1), ``Name`` (2, written even when empty: go-merkledag always
  assigns it), ``Tsize`` (3);
- UnixFS ``Data``: ``Type`` (1), ``Data`` (2, omitted when absent), ``filesize`` (3),
  ``blocksizes`` (4, one unpacked varint per child, proto2 style).

The decoders accept any field order (other implementations differ) but reject
unknown wire types, truncated fields and absurd fan-out, raising :class:`DecodeError`.

Specs: https://ipld.io/specs/codecs/dag-pb/spec/ and
https://github.com/ipfs/specs/blob/main/UNIXFS.md
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import DecodeError, MessageTooLarge
from .framing import decode_varint, encode_varint

# UnixFS Data.Type values.
RAW, DIRECTORY, FILE, METADATA, SYMLINK, HAMT_SHARD = range(6)

# A node with more links than this is not something Kubo produces for a file
# (174 per node) or a plain directory we accept; refusing it bounds the work a
# hostile block can cause.
MAX_LINKS = 10_000
MAX_NAME = 255


@dataclass(frozen=True, slots=True)
class PBLink:
    hash: bytes  # binary CID
    name: str = ""
    tsize: int = 0


@dataclass(frozen=True, slots=True)
class PBNode:
    links: tuple[PBLink, ...] = ()
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class UnixFSData:
    type: int
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: tuple[int, ...] = field(default=())


def _key(field_no: int, wire_type: int) -> bytes:
    return encode_varint(field_no << 3 | wire_type)


def _bytes_field(field_no: int, value: bytes) -> bytes:
    return _key(field_no, 2) + encode_varint(len(value)) + value


def _varint_field(field_no: int, value: int) -> bytes:
    return _key(field_no, 0) + encode_varint(value)


def encode_link(link: PBLink) -> bytes:
    return (
        _bytes_field(1, link.hash)
        + _bytes_field(2, link.name.encode("utf-8"))
        + _varint_field(3, link.tsize)
    )


def encode_node(node: PBNode) -> bytes:
    parts = [_bytes_field(2, encode_link(link)) for link in node.links]
    if node.data is not None:
        parts.append(_bytes_field(1, node.data))
    return b"".join(parts)


def encode_unixfs(msg: UnixFSData) -> bytes:
    parts = [_varint_field(1, msg.type)]
    if msg.data is not None:
        parts.append(_bytes_field(2, msg.data))
    if msg.filesize is not None:
        parts.append(_varint_field(3, msg.filesize))
    parts.extend(_varint_field(4, size) for size in msg.blocksizes)
    return b"".join(parts)


def _fields(buf: bytes):
    """Yield ``(field_no, wire_type, value)``; value is an int or a bytes slice."""
    pos = 0
    end = len(buf)
    while pos < end:
        head = decode_varint(buf, pos)
        if head is None:
            raise DecodeError("truncated protobuf key")
        key, used = head
        pos += used
        field_no, wire_type = key >> 3, key & 7
        if field_no == 0:
            raise DecodeError("protobuf field number 0")
        if wire_type == 0:
            val = decode_varint(buf, pos)
            if val is None:
                raise DecodeError("truncated protobuf varint")
            pos += val[1]
            yield field_no, 0, val[0]
        elif wire_type == 2:
            ln = decode_varint(buf, pos)
            if ln is None:
                raise DecodeError("truncated protobuf length")
            pos += ln[1]
            if pos + ln[0] > end:
                raise DecodeError("protobuf field runs past the end of the block")
            yield field_no, 2, buf[pos : pos + ln[0]]
            pos += ln[0]
        else:
            raise DecodeError(f"unsupported protobuf wire type {wire_type}")


def decode_link(buf: bytes) -> PBLink:
    hash_: bytes | None = None
    name = ""
    tsize = 0
    for no, wt, val in _fields(buf):
        if no == 1 and wt == 2:
            hash_ = bytes(val)
        elif no == 2 and wt == 2:
            if len(val) > MAX_NAME:
                raise DecodeError("link name too long")
            try:
                name = bytes(val).decode("utf-8")
            except UnicodeDecodeError:
                raise DecodeError("link name is not UTF-8") from None
        elif no == 3 and wt == 0:
            tsize = val
        else:
            raise DecodeError(f"unexpected field {no} in PBLink")
    if hash_ is None:
        raise DecodeError("PBLink without Hash")
    return PBLink(hash_, name, tsize)


def decode_node(buf: bytes) -> PBNode:
    links: list[PBLink] = []
    data: bytes | None = None
    for no, wt, val in _fields(buf):
        if no == 2 and wt == 2:
            if len(links) >= MAX_LINKS:
                raise MessageTooLarge(f"dag-pb node has more than {MAX_LINKS} links")
            links.append(decode_link(val))
        elif no == 1 and wt == 2:
            data = bytes(val)
        else:
            raise DecodeError(f"unexpected field {no} in PBNode")
    return PBNode(tuple(links), data)


def decode_unixfs(buf: bytes) -> UnixFSData:
    type_: int | None = None
    data: bytes | None = None
    filesize: int | None = None
    blocksizes: list[int] = []
    for no, wt, val in _fields(buf):
        if no == 1 and wt == 0:
            type_ = val
        elif no == 2 and wt == 2:
            data = bytes(val)
        elif no == 3 and wt == 0:
            filesize = val
        elif no == 4 and wt == 0:
            blocksizes.append(val)
        elif no == 4 and wt == 2:  # packed encoding, as some writers emit
            pos = 0
            while pos < len(val):
                item = decode_varint(val, pos)
                if item is None:
                    raise DecodeError("truncated packed blocksizes")
                blocksizes.append(item[0])
                pos += item[1]
        elif no in (5, 6, 7) and wt == 0 or no == 8 and wt == 2:
            continue  # hashType, fanout, mode, mtime: not needed to read files
        else:
            raise DecodeError(f"unexpected field {no} in UnixFS Data")
        if len(blocksizes) > MAX_LINKS:
            raise MessageTooLarge("too many UnixFS blocksizes")
    if type_ is None or not 0 <= type_ <= HAMT_SHARD:
        raise DecodeError("UnixFS Data without a valid Type")
    return UnixFSData(type_, data, filesize, tuple(blocksizes))
