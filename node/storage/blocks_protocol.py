"""``/mosaic/blocks/1``: a pipelined bulk block transfer over one libp2p stream.

Why not bitswap for our own peers: py-libp2p's bitswap stalls on retry timers
(median ~8 MiB/s for 50 MiB, research/libp2p.md B6) and races WANT-BLOCKs to every
peer (59-92 MiB sent for 50 MiB), while one raw yamux stream moves 50-70 MiB/s with
64 KiB-1 MiB writes.  Bitswap stays on for Kubo peers (node/storage/bitswap.py).

Wire format (every frame: unsigned-varint length + payload, protocol.framing):

- client -> server, any number of *request* frames, each the concatenation of up to
  :data:`MAX_CIDS_PER_REQUEST` entries ``varint(len) binary-CID``; the client may send
  the next request before the answers to the previous one arrived (pipelining) and
  half-closes when done;
- server -> client, one *response* frame per requested CID, in request order:
  ``0x00`` + block bytes, or ``0x01`` alone ("don't have").

Safety: request frames are capped at 4 KiB and responses at one block
(:data:`~protocol.unixfs.MAX_BLOCK_SIZE`) + 1, both checked before buffering; the
server applies a per-peer and a total stream limit, an idle deadline between
requests and a deadline per request (custom py-libp2p handlers get no read deadline
at all: research/libp2p.md section 3g); the client verifies every block's hash
(fetch.py) and never trusts a length it did not cap.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from protocol.cid import CID, cid_from_bytes
from protocol.errors import DecodeError, MessageTooLarge, ProtocolError
from protocol.framing import FrameDecoder, decode_varint, encode_varint
from protocol.unixfs import MAX_BLOCK_SIZE

from ..logs import event, get_logger
from ..net.streams import TRANSPORT_ERRORS, StreamClosed, stream_path
from .blockstore import BlockStore
from .upload_limit import UploadLimiter

if TYPE_CHECKING:
    from libp2p.abc import IHost, INetStream

log = get_logger("storage.blocks")

BLOCKS_PROTOCOL = "/mosaic/blocks/1"
MAX_CIDS_PER_REQUEST = 64
MAX_REQUEST_FRAME = 4096
MAX_RESPONSE_FRAME = MAX_BLOCK_SIZE + 1
STATUS_BLOCK = 0
STATUS_MISSING = 1
# "Not over this connection": the server refuses to send weights through a relay past its cap
# (issue 20); the frame carries the reason as UTF-8.
STATUS_REFUSED = 2
_READ_SIZE = 1024 * 1024


def encode_request(cids: list[CID]) -> bytes:
    if not 0 < len(cids) <= MAX_CIDS_PER_REQUEST:
        raise ValueError(f"a request carries 1..{MAX_CIDS_PER_REQUEST} CIDs")
    body = b"".join(encode_varint(len(raw)) + raw for raw in (c.to_bytes() for c in cids))
    return encode_varint(len(body)) + body


def decode_request(payload: bytes) -> list[CID]:
    cids: list[CID] = []
    pos = 0
    while pos < len(payload):
        head = decode_varint(payload, pos)
        if head is None or pos + head[1] + head[0] > len(payload):
            raise DecodeError("truncated CID in block request")
        pos += head[1]
        cids.append(cid_from_bytes(payload[pos : pos + head[0]]))
        pos += head[0]
        if len(cids) > MAX_CIDS_PER_REQUEST:
            raise MessageTooLarge(f"more than {MAX_CIDS_PER_REQUEST} CIDs in one request")
    if not cids:
        raise DecodeError("empty block request")
    return cids


class FrameReader:
    """Reads capped varint frames from a libp2p stream; ``None`` at a clean EOF."""

    def __init__(self, stream: INetStream, max_frame: int) -> None:
        self._stream = stream
        self._decoder = FrameDecoder(max_frame)
        self._ready: list[bytes] = []
        self._eof = False

    async def next(self) -> bytes | None:
        while not self._ready:
            if self._eof:
                if self._decoder.pending:
                    raise StreamClosed("stream ended mid-frame")
                return None
            try:
                chunk = await self._stream.read(_READ_SIZE)
            except TRANSPORT_ERRORS:
                chunk = b""
            if not chunk:
                self._eof = True
                continue
            self._ready.extend(self._decoder.feed(chunk))  # raises MessageTooLarge before buffering
        return self._ready.pop(0)


@dataclass
class ServerStats:
    blocks_served: int = 0
    bytes_served: int = 0
    missing: int = 0
    refused_streams: int = 0
    bad_requests: int = 0
    refused_relayed: int = 0


class TransferRefused(StreamClosed):
    """The provider refused to send more blocks over this (relayed) connection."""


class BlockServer:
    """Serves blocks from a :class:`BlockStore` on ``/mosaic/blocks/1``."""

    def __init__(
        self,
        store: BlockStore,
        *,
        max_per_peer: int = 4,
        max_total: int = 32,
        idle_timeout: float = 30.0,
        request_deadline: float = 60.0,
        upload_limit: UploadLimiter | None = None,
        relay_cap_bytes: int | None = None,
    ) -> None:
        self.store = store
        # Bytes one peer may fetch over relayed connections (None: no cap).  Weights are big and
        # relays are shared and capped per circuit: a peer should fetch directly (hole punching
        # or another provider) rather than push gigabytes through someone else's relay.
        self.relay_cap_bytes = relay_cap_bytes
        self._relayed_bytes: Counter[str] = Counter()
        self.upload_limit = upload_limit or UploadLimiter(None)
        self.max_per_peer = max_per_peer
        self.max_total = max_total
        self.idle_timeout = idle_timeout
        self.request_deadline = request_deadline
        self.stats = ServerStats()
        self._per_peer: Counter[str] = Counter()
        self._total = 0

    def _over_relay_cap(self, stream: INetStream, peer: str, size: int) -> bool:
        if self.relay_cap_bytes is None or stream_path(stream) != "relayed":
            return False
        if self._relayed_bytes[peer] + size > self.relay_cap_bytes:
            return True
        self._relayed_bytes[peer] += size
        return False

    def register(self, host: IHost) -> None:
        host.set_stream_handler(TProtocol(BLOCKS_PROTOCOL), self._on_stream)

    async def _on_stream(self, stream: INetStream) -> None:
        peer = str(stream.muxed_conn.peer_id)
        if self._total >= self.max_total or self._per_peer[peer] >= self.max_per_peer:
            self.stats.refused_streams += 1
            event(log, "blocks_stream_refused", peer=peer, in_flight=self._per_peer[peer])
            await _reset(stream)
            return
        self._per_peer[peer] += 1
        self._total += 1
        try:
            await self._serve(stream, peer)
        except (ProtocolError, StreamClosed, trio.TooSlowError) as exc:
            self.stats.bad_requests += isinstance(exc, ProtocolError)
            event(log, "blocks_stream_failed", peer=peer, error=type(exc).__name__, detail=str(exc)[:200])
            await _reset(stream)
        except TRANSPORT_ERRORS:
            await _reset(stream)
        else:
            try:
                await stream.close()
            except TRANSPORT_ERRORS:
                pass
        finally:
            self._total -= 1
            self._per_peer[peer] -= 1
            if self._per_peer[peer] <= 0:
                del self._per_peer[peer]

    async def _serve(self, stream: INetStream, peer: str) -> None:
        reader = FrameReader(stream, MAX_REQUEST_FRAME)
        while True:
            with trio.fail_after(self.idle_timeout):
                payload = await reader.next()
            if payload is None:
                return
            cids = decode_request(payload)
            with trio.fail_after(self.request_deadline):
                for cid in cids:
                    # A 256 KiB read from the page cache takes ~0.1 ms: cheaper inline
                    # than a thread hop, and it keeps frames in request order.
                    data = self.store.get(cid)
                    if data is not None and self._over_relay_cap(stream, peer, len(data)):
                        self.stats.refused_relayed += 1
                        why = (f"weight transfer over a relayed connection refused: more than "
                               f"{(self.relay_cap_bytes or 0) / 2**20:g} MiB to this peer through a relay; "
                               "fetch from a provider you reach directly").encode()
                        event(log, "blocks_relay_cap", peer=peer, sent=self._relayed_bytes[peer])
                        await stream.write(encode_varint(len(why) + 1) + bytes((STATUS_REFUSED,)) + why)
                        return
                    if data is None:
                        self.stats.missing += 1
                        frame = encode_varint(1) + bytes((STATUS_MISSING,))
                    else:
                        frame = encode_varint(len(data) + 1) + bytes((STATUS_BLOCK,)) + data
                        self.stats.blocks_served += 1
                        self.stats.bytes_served += len(data)
                    await self.upload_limit.acquire(len(frame))
                    await stream.write(frame)


async def _reset(stream: INetStream) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1.0):
        try:
            await stream.reset()
        except TRANSPORT_ERRORS:
            pass


class BlockStream:
    """Client side: pipelined requests to one provider."""

    def __init__(self, stream: INetStream, peer_id: str) -> None:
        self._stream = stream
        self.peer_id = peer_id
        self._reader = FrameReader(stream, MAX_RESPONSE_FRAME)

    @classmethod
    async def open(cls, host: IHost, peer_id: str) -> BlockStream:
        try:
            raw = await host.new_stream(ID.from_base58(peer_id), [TProtocol(BLOCKS_PROTOCOL)])
        except trio.Cancelled:
            raise
        except Exception as exc:  # libp2p raises StreamFailure, SwarmException, ...
            raise StreamClosed(f"cannot open {BLOCKS_PROTOCOL} to {peer_id[-8:]}: {type(exc).__name__}") from None
        return cls(raw, peer_id)

    async def request(self, cids: list[CID]) -> None:
        try:
            await self._stream.write(encode_request(cids))
        except TRANSPORT_ERRORS as exc:
            raise StreamClosed(f"provider {self.peer_id[-8:]} went away: {type(exc).__name__}") from None

    async def receive(self) -> bytes | None:
        """The next answered block's bytes, or ``None`` for "don't have"."""
        frame = await self._reader.next()
        if frame is None:
            raise StreamClosed(f"provider {self.peer_id[-8:]} closed the stream")
        if frame and frame[0] == STATUS_REFUSED:
            reason = bytes(frame[1:513]).decode("utf-8", "replace")
            raise TransferRefused(f"provider {self.peer_id[-8:]}: {reason}")
        if not frame or frame[0] not in (STATUS_BLOCK, STATUS_MISSING):
            raise DecodeError("bad block response status")
        if frame[0] == STATUS_MISSING:
            if len(frame) != 1:
                raise DecodeError("'don't have' answer with a body")
            return None
        return frame[1:]

    async def aclose(self) -> None:
        try:
            await self._stream.close()
        except TRANSPORT_ERRORS:
            pass

    async def reset(self) -> None:
        await _reset(self._stream)
