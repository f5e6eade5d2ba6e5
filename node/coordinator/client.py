"""Client side of ``/mosaic/query/1``: ask any peer a question, get its answer as a stream.

Used by ``python -m node query`` from a bare libp2p host (not a full node):
the peer we ask is the coordinator and does all routing.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

import trio

from node.net.streams import StreamClosed, open_stream
from protocol import QUERY_PROTOCOL, ErrorMessage, ProtocolError, QueryChunk, QueryRequest, QueryResult

from .calls import QueryFailed

if TYPE_CHECKING:
    from libp2p.abc import IHost

# Chunks are small, but a non-streamed answer arrives in one frame: allow the protocol's max.
_REPLIES = (QueryChunk, QueryResult, ErrorMessage)


async def ask(host: IHost, peer_id: str, request: QueryRequest) -> AsyncGenerator[QueryChunk | QueryResult, None]:
    """Send ``request`` to ``peer_id``; yield its chunks then its :class:`QueryResult`.

    Raises :class:`QueryFailed` with the remote ErrorMessage's code (``busy``,
    ``not_found``, ``timeout`` ...) or ``unavailable`` when the stream breaks.
    The caller owns the deadline (``trio.fail_after``) and should close the
    iterator (``contextlib.aclosing``) so an abandoned query resets the stream.
    """
    try:
        stream = await open_stream(host, peer_id, QUERY_PROTOCOL)
    except StreamClosed as exc:
        raise QueryFailed("unavailable", str(exc)) from None
    finished = False
    try:
        await stream.send(request)
        while True:
            message = await stream.receive(_REPLIES)
            if isinstance(message, ErrorMessage):
                raise QueryFailed(message.code, message.message)
            if message.request_id != request.request_id:
                raise QueryFailed("internal", f"reply for request {message.request_id!r}, not ours")
            if isinstance(message, QueryResult):
                finished = True
                yield message
                return
            yield message
    except StreamClosed as exc:
        raise QueryFailed("unavailable", f"coordinator closed the stream: {exc}") from None
    except ProtocolError as exc:
        raise QueryFailed("internal", f"coordinator sent a malformed reply: {exc}") from None
    finally:
        # Shielded and bounded: this also runs when the caller's deadline cancelled us.
        with trio.CancelScope(shield=True), trio.move_on_after(2.0):
            if finished:
                await stream.aclose()
            else:
                await stream.reset()  # tells the coordinator to stop generating
