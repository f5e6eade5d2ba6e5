"""Framed request/response streams over libp2p with deadlines and per-peer limits.

Why not ``libp2p.request_response``: its inbound limit is global per protocol,
so one peer holding idle streams starves every other peer (research/libp2p.md
B10), and custom ``set_stream_handler`` handlers get no read deadline at all (a
silent stream stayed blocked in ``read()`` for 150 s).  :func:`serve` adds both:
a per-peer and a total in-flight cap, a first-message deadline and an overall
deadline, and it always answers with a typed :class:`protocol.ErrorMessage`
(never a traceback).

Framing is :mod:`protocol.framing` (unsigned-varint length + msgpack body, the
same as libp2p msgio), decoding is :func:`protocol.decode`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar, overload

import trio
from libp2p.abc import IHost
from libp2p.custom_types import TProtocol
from libp2p.io.exceptions import IOException
from libp2p.peer.id import ID
from libp2p.stream_muxer.exceptions import MuxedConnError, MuxedStreamError

import protocol
from protocol import ErrorMessage, FrameDecoder, Message, MessageTooLarge, ProtocolError, encode, encode_frame

from ..logs import event, get_logger, limited_event
from .addresses import connection_ip, exempt_from_caps, subnet_of

M = TypeVar("M", bound=Message)
M2 = TypeVar("M2", bound=Message)
M3 = TypeVar("M3", bound=Message)
M4 = TypeVar("M4", bound=Message)

log = get_logger("net.streams")

_READ_CHUNK = 64 * 1024
# Best effort for the goodbye error frame: a peer that does not read must not hold us.
_ERROR_SEND_TIMEOUT = 1.0

# Everything libp2p / trio raise when the other side went away mid-stream.
TRANSPORT_ERRORS = (
    IOException,
    MuxedStreamError,
    MuxedConnError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    EOFError,
    ConnectionError,
)


class StreamClosed(Exception):
    """The peer closed or reset the stream (or it could not be opened)."""


class FramedStream:
    """A libp2p stream carrying varint-framed protocol messages (protocol.framing + protocol.codec)."""

    def __init__(self, stream: object, *, max_frame: int = protocol.MAX_MESSAGE_SIZE) -> None:
        self._stream = stream
        self.remote_peer: str = str(stream.muxed_conn.peer_id)  # type: ignore[attr-defined]
        self.max_frame = max_frame
        self._decoder = FrameDecoder(max_frame)
        self._ready: list[bytes] = []
        self._eof = False
        self._closed = False
        # Absolute trio time by which the first frame must arrive (set by serve()).
        self.first_frame_deadline: float = math.inf
        self.frames_received = 0

    @property
    def raw(self) -> object:
        """The underlying libp2p ``INetStream`` (for protocol ids, stats)."""
        return self._stream

    async def send(self, message: Message) -> None:
        data = encode_frame(encode(message), self.max_frame)
        try:
            await self._stream.write(data)  # type: ignore[attr-defined]
        except TRANSPORT_ERRORS as exc:
            raise StreamClosed(
                f"stream to {self.remote_peer[-8:]} closed while sending: {type(exc).__name__}"
            ) from None

    # The reply is one of the expected types: say so to the type checker.
    @overload
    async def receive(self, expected: type[M]) -> M: ...
    @overload
    async def receive(self, expected: tuple[type[M], type[M2]]) -> M | M2: ...
    @overload
    async def receive(self, expected: tuple[type[M], type[M2], type[M3]]) -> M | M2 | M3: ...
    @overload
    async def receive(self, expected: tuple[type[M], type[M2], type[M3], type[M4]]) -> M | M2 | M3 | M4: ...
    @overload
    async def receive(self, expected: tuple[type[Message], ...] | None = None) -> Message: ...

    async def receive(self, expected: type[Message] | tuple[type[Message], ...] | None = None) -> Message:
        """Next message; ``ProtocolError`` on bad bytes, :class:`StreamClosed` on EOF/reset."""
        frame = await self._next_frame()
        return protocol.decode(frame, expected, max_size=self.max_frame)

    async def _next_frame(self) -> bytes:
        if self.frames_received == 0 and self.first_frame_deadline != math.inf:
            with trio.fail_at(self.first_frame_deadline):
                frame = await self._read_frame()
        else:
            frame = await self._read_frame()
        self.frames_received += 1
        return frame

    async def _read_frame(self) -> bytes:
        while not self._ready:
            if self._eof:
                raise StreamClosed(f"stream from {self.remote_peer[-8:]} ended")
            try:
                chunk = await self._stream.read(_READ_CHUNK)  # type: ignore[attr-defined]
            except TRANSPORT_ERRORS as exc:
                self._eof = True
                if self._decoder.pending:
                    raise StreamClosed(f"stream from {self.remote_peer[-8:]} ended mid-frame") from None
                raise StreamClosed(f"stream from {self.remote_peer[-8:]} closed: {type(exc).__name__}") from None
            if not chunk:
                self._eof = True
                continue
            self._ready.extend(self._decoder.feed(chunk))  # may raise MessageTooLarge / DecodeError
        return self._ready.pop(0)

    async def aclose(self) -> None:
        """Close our side (write half-close on yamux); the peer sees EOF after our last frame."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._stream.close()  # type: ignore[attr-defined]
        except TRANSPORT_ERRORS:
            pass

    async def reset(self) -> None:
        self._closed = True
        try:
            await self._stream.reset()  # type: ignore[attr-defined]
        except TRANSPORT_ERRORS:
            pass


Connector = Callable[[str], Awaitable[None]]


class StreamPaths:
    """How a node's streams to its peers went, and how to reach a peer its swarm cannot dial.

    Owned by the Node (``node.stream_paths``) and handed explicitly to what opens streams for it
    (the coordinator's transport, the record exchange): ``connector(peer_id)`` runs before a
    stream is opened (node.nat sets it: relay circuits), ``opened`` counts streams by path for
    /metrics, :meth:`last` is what a trace step reports.
    """

    MAX_PEERS = 4096  # last paths kept (one per peer); cleared past it

    def __init__(self) -> None:
        self.connector: Connector | None = None
        self.opened: Counter[str] = Counter()
        self._last: dict[str, str] = {}

    def opened_to(self, peer_id: str, path: str) -> None:
        self.opened[path] += 1
        if len(self._last) > self.MAX_PEERS:
            self._last.clear()
        self._last[peer_id] = path

    def last(self, peer_id: str) -> str | None:
        """``direct`` or ``relayed``: how the last stream to ``peer_id`` went (None: none opened)."""
        return self._last.get(peer_id)


def stream_path(raw: object) -> str:
    """``"relayed"`` when the stream runs over a ``/p2p-circuit`` connection, else ``"direct"``."""
    conn = getattr(raw, "muxed_conn", None)
    for candidate in (conn, getattr(conn, "secured_conn", None)):
        try:
            addrs = candidate.get_transport_addresses()  # type: ignore[union-attr]
        except Exception:
            continue
        if addrs:
            return "relayed" if any("/p2p-circuit" in str(a) for a in addrs) else "direct"
    return "direct"


async def open_stream(
    host: IHost, peer_id: str, protocol_id: str, *, max_frame: int = protocol.MAX_MESSAGE_SIZE,
    paths: StreamPaths | None = None,
) -> FramedStream:
    """Open a new stream to ``peer_id`` (connected, dialable from the peerstore, or via ``paths``' connector)."""
    try:
        if paths is not None and paths.connector is not None:
            await paths.connector(peer_id)
        raw = await host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol_id)])
    except trio.Cancelled:
        raise
    except Exception as exc:  # libp2p raises StreamFailure, SwarmException, IOException, ...
        raise StreamClosed(f"cannot open {protocol_id} to {peer_id[-8:]}: {type(exc).__name__}: {exc}") from None
    if paths is not None:
        paths.opened_to(peer_id, stream_path(raw))
    return FramedStream(raw, max_frame=max_frame)


Handler = Callable[[FramedStream], Awaitable[None]]


def _leaf_errors(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        out: list[BaseException] = []
        for inner in exc.exceptions:
            out.extend(_leaf_errors(inner))
        return out
    return [exc]


def _only_cancelled(exc: BaseException) -> bool:
    leaves = _leaf_errors(exc)
    return bool(leaves) and all(isinstance(e, trio.Cancelled) for e in leaves)


def _error_reply(exc: BaseException) -> ErrorMessage | None:
    """The typed answer for a failed handler, or ``None`` when the peer is gone."""
    leaves = [e for e in _leaf_errors(exc) if not isinstance(e, trio.Cancelled)] or [exc]
    first = leaves[0]
    if isinstance(first, StreamClosed):
        return None
    if isinstance(first, MessageTooLarge):
        return ErrorMessage(code="too_large", message=str(first)[:2048])
    if isinstance(first, ProtocolError):
        return ErrorMessage(code="bad_request", message=f"{type(first).__name__}: {first}"[:2048])
    if isinstance(first, trio.TooSlowError):
        return ErrorMessage(code="timeout", message="deadline passed")
    return ErrorMessage(code="internal", message="internal error")


# One IP address may hold at most this fraction of a protocol's slots, one subnet (/24 for
# IPv4, /48 for IPv6) this one: identities are free, addresses are not (issue 12: 20
# identities x 4 idle streams made every honest query "busy").  Loopback is exempt
# (addresses.py).
MAX_SHARE_PER_IP = 0.5
MAX_SHARE_PER_SUBNET = 0.75


class _Limits:
    """In-flight accounting for one served protocol (B10: libp2p's limit is per protocol only).

    Caps per peer id, per IP and per subnet, and in total.  When the protocol is
    full, a newcomer evicts the stream that has waited longest without sending its
    first frame (an idle squatter) rather than being refused: an honest client
    sends its request at once, so it is never idle for long.
    """

    def __init__(self, max_per_peer: int, max_total: int) -> None:
        self.max_per_peer = max_per_peer
        self.max_total = max_total
        self.max_per_ip = max(max_per_peer, int(max_total * MAX_SHARE_PER_IP))
        self.max_per_subnet = max(max_per_peer, int(max_total * MAX_SHARE_PER_SUBNET))
        self.per_peer: Counter[str] = Counter()
        self.per_ip: Counter[str] = Counter()
        self.per_subnet: Counter[str] = Counter()
        self.total = 0
        # Streams still waiting for their first frame: stream -> (opened at, its cancel scope).
        self.waiting: dict[FramedStream, tuple[float, trio.CancelScope]] = {}
        self.evicted = 0

    def refusal(self, peer: str, ip: str | None) -> str | None:
        """Why a new stream from ``peer`` at ``ip`` is refused, or ``None`` (then acquire it)."""
        if self.per_peer[peer] >= self.max_per_peer:
            return "peer"
        if not exempt_from_caps(ip):
            if self.per_ip[ip] >= self.max_per_ip:  # type: ignore[index]
                return "ip"
            if self.per_subnet[subnet_of(ip)] >= self.max_per_subnet:  # type: ignore[arg-type]
                return "subnet"
        if self.total >= self.max_total and not self._evict_idle():
            return "total"
        return None

    def _evict_idle(self) -> bool:
        idle = [(opened, stream) for stream, (opened, _) in self.waiting.items() if stream.frames_received == 0]
        if not idle:
            return False
        _, stream = min(idle, key=lambda pair: pair[0])
        _, scope = self.waiting.pop(stream)
        scope.cancel()
        self.evicted += 1
        return True

    def acquire(self, peer: str, ip: str | None) -> None:
        self.per_peer[peer] += 1
        self.total += 1
        if not exempt_from_caps(ip):
            self.per_ip[ip] += 1  # type: ignore[index]
            self.per_subnet[subnet_of(ip)] += 1  # type: ignore[arg-type]

    def try_acquire(self, peer: str, ip: str | None = None) -> bool:
        if self.refusal(peer, ip) is not None:
            return False
        self.acquire(peer, ip)
        return True

    def release(self, peer: str, ip: str | None = None) -> None:
        self.total -= 1
        subnet = subnet_of(ip) if ip else None
        for counter, key in ((self.per_peer, peer), (self.per_ip, ip), (self.per_subnet, subnet)):
            if key is None or key not in counter:
                continue
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]


class Allowlist:
    """Who may open streams on the protocols a node serves: in a private swarm only ``peers``
    (and the node itself); ``None`` or empty: anyone (an open swarm).  The node holds one and
    hands it to every :func:`serve` it registers."""

    def __init__(self, own_id: str, peers: Iterable[str] | None = None) -> None:
        self.peers = frozenset(peers) | {own_id} if peers else None

    def allows(self, peer_id: str) -> bool:
        return self.peers is None or peer_id in self.peers


OPEN_SWARM = Allowlist("")


def serve(
    host: IHost,
    protocol_id: str,
    handler: Handler,
    *,
    allowlist: Allowlist,
    first_message_timeout: float = 10.0,
    deadline: float = 60.0,
    max_per_peer: int = 4,
    max_total: int = 64,
    max_frame: int = protocol.MAX_MESSAGE_SIZE,
) -> None:
    """Register ``handler`` for ``protocol_id`` on ``host`` behind deadlines and limits.

    * A peer ``allowlist`` does not allow (a private swarm) gets ``unavailable``.
    * A peer with ``max_per_peer`` streams in flight on this protocol (or its IP
      or subnet at its share of ``max_total``) gets ``ErrorMessage(code="busy")`` at
      once and the new stream is closed: one peer's idle streams cannot starve the
      others.  At ``max_total``, the longest-idle stream (no first frame yet) is
      reset to make room; only when none is idle is the newcomer refused.
    * The first frame must arrive within ``first_message_timeout`` (slowloris);
      the whole exchange within ``deadline``.
    * ``ProtocolError`` -> ``bad_request`` / ``too_large``; deadline -> ``timeout``;
      anything else is logged here and answered ``internal``.
    * The stream is always closed (or reset) at the end.
    """
    limits = _Limits(max_per_peer, max_total)

    async def _on_stream(raw: object) -> None:
        stream = FramedStream(raw, max_frame=max_frame)
        peer = stream.remote_peer
        if not allowlist.allows(peer):
            limited_event(log, "stream_refused", protocol=protocol_id, peer=peer, reason="not a trusted peer")
            await _say_goodbye(stream, ErrorMessage(code="unavailable", message="this node serves a private swarm"))
            return
        ip = connection_ip(raw)
        refused = limits.refusal(peer, ip)
        if refused is not None:
            limited_event(log, "stream_busy", protocol=protocol_id, peer=peer, limit=refused,
                          in_flight=limits.per_peer[peer], total=limits.total)
            await _say_goodbye(stream, ErrorMessage(code="busy", message="too many streams in flight; retry later"))
            return
        limits.acquire(peer, ip)
        started = trio.current_time()
        stream.first_frame_deadline = started + first_message_timeout
        squat = trio.CancelScope()
        limits.waiting[stream] = (started, squat)
        try:
            with squat:
                with trio.fail_after(deadline):
                    await handler(stream)
            if squat.cancelled_caught:
                limited_event(log, "stream_evicted", protocol=protocol_id, peer=peer, reason="idle under pressure")
                await _hard_reset(stream)
                return
        except trio.Cancelled:
            await _hard_reset(stream)
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a typed reply
            if isinstance(exc, (KeyboardInterrupt, SystemExit)) or _only_cancelled(exc):
                # We are being shut down (the handler's own nursery reported it): not the peer's fault.
                await _hard_reset(stream)
                raise
            reply = _error_reply(exc)
            if reply is not None and reply.code == "internal":
                log.error("event=handler_failed protocol=%s peer=%s", protocol_id, peer[-8:], exc_info=exc)
            else:
                event(
                    log,
                    "stream_failed",
                    protocol=protocol_id,
                    peer=peer,
                    code=reply.code if reply else "closed",
                    after_s=f"{trio.current_time() - started:.3f}",
                    detail=str(_leaf_errors(exc)[0])[:200],
                )
            if reply is None:
                await _hard_reset(stream)
            else:
                await _say_goodbye(stream, reply)
        else:
            await stream.aclose()
        finally:
            limits.waiting.pop(stream, None)
            limits.release(peer, ip)

    host.set_stream_handler(TProtocol(protocol_id), _on_stream)


async def _say_goodbye(stream: FramedStream, reply: ErrorMessage) -> None:
    """Send ``reply`` (bounded in time) then close; reset if the peer does not take it."""
    with trio.move_on_after(_ERROR_SEND_TIMEOUT) as scope:
        try:
            await stream.send(reply)
            await stream.aclose()
        except StreamClosed:
            await stream.reset()
            return
    if scope.cancelled_caught:
        await _hard_reset(stream)


async def _hard_reset(stream: FramedStream) -> None:
    # Reset even when we are being cancelled: shielded and bounded.
    with trio.CancelScope(shield=True), trio.move_on_after(_ERROR_SEND_TIMEOUT):
        await stream.reset()
