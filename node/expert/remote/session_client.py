"""Client side of generation sessions on ``/mosaic/infer/1`` (see sessions.py for the exchange).

``open_session`` is an async context manager yielding an :class:`ExpertSession`
whose ``first`` is the distribution after the prompt; ``append`` feeds tokens
and returns the next distribution; leaving the block closes the session
(best effort, bounded) unless ``close()`` already did and returned the
receipt.  One stream carries the whole session.  A session on our own node
goes straight to the local worker (a host cannot dial itself).

Errors: :class:`ExpertError` with the wire code (``not_found``: unknown,
closed or expired session; ``busy``: too many sessions; ``too_large``:
context full; ``bad_request``), ``StreamClosed`` (transport), or
``trio.TooSlowError`` (no reply within ``timeout``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

from protocol import (
    INFER_PROTOCOL,
    ErrorMessage,
    Message,
    SessionAppend,
    SessionClose,
    SessionClosed,
    SessionNext,
    SessionOpen,
)

from ...net.streams import FramedStream, StreamClosed, StreamPaths, open_stream
from ..serve.local import ExpertError

if TYPE_CHECKING:
    from libp2p.abc import IHost

    from ..serve.sessions import SessionHost

DEFAULT_STEP_TIMEOUT = 30.0
_CLOSE_TIMEOUT = 5.0


class ExpertSession:
    """An open session on one expert; not safe for concurrent use (steps are strictly ordered)."""

    def __init__(self, peer_id: str, request: SessionOpen, *, timeout: float,
                 stream: FramedStream | None = None, local: SessionHost | None = None, owner: str = "") -> None:
        self.peer_id = peer_id
        self.session_id = request.session_id
        self.top_k = request.top_k
        self.timeout = timeout
        self.first: SessionNext | None = None
        self.closed: SessionClosed | None = None
        self.broken = False  # a step timed out, was cancelled or lost its stream
        self._request = request
        self._stream = stream
        self._local = local
        self._owner = owner

    async def _exchange(self, message: Message, kind: type) -> Message:
        if self.broken:
            raise StreamClosed(f"session {self.session_id!r} to {self.peer_id[-8:]} is broken")
        try:
            with trio.fail_after(self.timeout):
                if self._local is not None:
                    reply = await self._local.handle(self._owner, message)
                else:
                    assert self._stream is not None
                    await self._stream.send(message)
                    reply = await self._stream.receive((kind, ErrorMessage))
        except BaseException:
            # A reply may still be on its way: this stream is out of step for good.
            self.broken = self._local is None
            raise
        if isinstance(reply, ErrorMessage):
            raise ExpertError.from_message(reply)
        return reply

    async def _open(self) -> SessionNext:
        self.first = await self._exchange(self._request, SessionNext)  # type: ignore[assignment]
        return self.first  # type: ignore[return-value]

    async def append(self, token_ids: Sequence[int], *, top_k: int | None = None) -> SessionNext:
        """Feed ``token_ids``; return the distribution of the token after them."""
        message = SessionAppend(session_id=self.session_id, token_ids=tuple(token_ids), top_k=top_k or self.top_k)
        return await self._exchange(message, SessionNext)  # type: ignore[return-value]

    async def close(self) -> SessionClosed:
        """End the session; the reply carries the expert's signed receipt."""
        if self.closed is None:
            self.closed = await self._exchange(SessionClose(session_id=self.session_id), SessionClosed)  # type: ignore[assignment]
        return self.closed  # type: ignore[return-value]


@asynccontextmanager
async def open_session(host: IHost, peer_id: str, request: SessionOpen, *, timeout: float = DEFAULT_STEP_TIMEOUT,
                       local: SessionHost | None = None, paths: StreamPaths | None = None
                       ) -> AsyncIterator[ExpertSession]:
    """Open ``request`` on expert ``peer_id``; yield the session (its ``first`` distribution is set).

    ``local``: the sessions of the expert this node serves, used when ``peer_id`` is this
    node (a host cannot dial itself); ``paths``: the node's :class:`StreamPaths`."""
    if str(host.get_id()) == peer_id:
        if local is None:
            raise ExpertError("unavailable", "this node serves no expert sessions")
        session = ExpertSession(peer_id, request, timeout=timeout, local=local, owner=peer_id)
        await session._open()
        try:
            yield session
        finally:
            await _close_quietly(session)
        return
    stream = await open_stream(host, peer_id, INFER_PROTOCOL, paths=paths)
    session = ExpertSession(peer_id, request, timeout=timeout, stream=stream)
    try:
        await session._open()
        try:
            yield session
        finally:
            await _close_quietly(session)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(2.0):
            await (stream.reset() if session.broken else stream.aclose())


async def _close_quietly(session: ExpertSession) -> None:
    """Close on the way out (also when cancelled): the expert frees the cache now, not at idle expiry."""
    if session.closed is not None or session.broken:
        return
    with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
        try:
            await session.close()
        except (ExpertError, StreamClosed, trio.TooSlowError):
            pass  # the expert drops it at idle expiry anyway
