"""Client side of ``/mosaic/infer/1`` (used by coordinators, the CLI and tests).

``generate`` is an async generator: use it under ``contextlib.aclosing`` so
leaving early resets the stream, which makes the expert cancel the job and
free its batch slot.  Errors from the expert raise :class:`ExpertError` with
the wire ``code`` (``busy`` -> try another expert, ``not_found``, ...).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING, TypeVar

import trio

from protocol import (
    INFER_PROTOCOL,
    Cancel,
    ErrorMessage,
    GenerateEvent,
    GenerateRequest,
    GenerateResult,
    Message,
    NextTokenRequest,
    NextTokenResult,
    Queued,
    ScoreRequest,
    ScoreResult,
    TokenChunk,
)

from ...net.streams import FramedStream, StreamClosed, StreamPaths, open_stream
from ..serve.local import DEFAULT_CALL_TIMEOUT, ExpertError, LocalExpert

# The result type a score / next-token call expects back.
R = TypeVar("R", bound=Message)

if TYPE_CHECKING:
    from libp2p.abc import IHost

# The expert enforces request.timeout_s; the client waits a little longer for its terminal message.
_CLIENT_GRACE = 10.0


async def generate(
    host: IHost, peer_id: str, request: GenerateRequest, *, local: LocalExpert | None = None,
    paths: StreamPaths | None = None,
) -> AsyncGenerator[GenerateEvent, None]:
    """Stream ``TokenChunk``s then the ``GenerateResult`` from expert ``peer_id``.

    With ``request.progress`` set, ``Queued`` messages come first while the
    request waits for a batch slot (the expert is alive, just busy).

    Raises :class:`ExpertError` (expert's ErrorMessage), ``StreamClosed``
    (transport) or ``trio.TooSlowError`` (no result within the request's timeout).
    ``local``: the expert this node serves, used when ``peer_id`` is this node (a host cannot
    dial itself); ``paths``: the node's :class:`StreamPaths` (relay circuits, path counts); the
    same for :func:`score` and :func:`next_token`.
    """
    local = _local_target(host, peer_id, local)
    if local is not None:
        async with aclosing(local.generate(request)) as events:
            async for message in events:
                yield message
        return
    # No yield inside a cancel scope (trio forbids it in async generators): each wait gets the deadline.
    deadline = trio.current_time() + request.timeout_s + _CLIENT_GRACE
    stream = await open_stream(host, peer_id, INFER_PROTOCOL, paths=paths)
    finished = False
    try:
        with trio.fail_at(deadline):
            await stream.send(request)
        while True:
            with trio.fail_at(deadline):
                reply = await stream.receive((Queued, TokenChunk, GenerateResult, ErrorMessage))
            if isinstance(reply, ErrorMessage):
                finished = True
                raise ExpertError.from_message(reply)
            if isinstance(reply, GenerateResult):
                finished = True
                yield reply
                return
            yield reply
    finally:
        await _close(stream, graceful=finished)


async def cancel_and_collect(stream: FramedStream, request_id: str) -> GenerateResult | None:
    """Send ``Cancel`` on an open generation stream and wait for the (cancelled) result."""
    await stream.send(Cancel(request_id=request_id))
    while True:
        message = await stream.receive((TokenChunk, GenerateResult, ErrorMessage))
        if isinstance(message, ErrorMessage):
            raise ExpertError.from_message(message)
        if isinstance(message, GenerateResult):
            return message


async def score(
    host: IHost, peer_id: str, request: ScoreRequest, *, timeout: float = DEFAULT_CALL_TIMEOUT,
    local: LocalExpert | None = None, paths: StreamPaths | None = None,
) -> ScoreResult:
    """Per-token log-probabilities of ``request.continuation`` after the prompt."""
    return await _call(host, peer_id, request, ScoreResult, timeout, local, paths)


async def next_token(
    host: IHost, peer_id: str, request: NextTokenRequest, *, timeout: float = DEFAULT_CALL_TIMEOUT,
    local: LocalExpert | None = None, paths: StreamPaths | None = None,
) -> NextTokenResult:
    """Top-k log-probabilities of the token after the prompt."""
    return await _call(host, peer_id, request, NextTokenResult, timeout, local, paths)


async def _call(host: IHost, peer_id: str, request: ScoreRequest | NextTokenRequest, kind: type[R],
                timeout: float, local: LocalExpert | None, paths: StreamPaths | None) -> R:
    local = _local_target(host, peer_id, local)
    if local is not None:
        with trio.fail_after(timeout + _CLIENT_GRACE):
            return await local.call(request, kind)
    stream = await open_stream(host, peer_id, INFER_PROTOCOL, paths=paths)
    finished = False
    try:
        with trio.fail_after(timeout + _CLIENT_GRACE):
            await stream.send(request)
            message = await stream.receive((kind, ErrorMessage))
        finished = True
        if isinstance(message, ErrorMessage):
            raise ExpertError.from_message(message)
        return message
    finally:
        await _close(stream, graceful=finished)


def _local_target(host: IHost, peer_id: str, local: LocalExpert | None) -> LocalExpert | None:
    """Our own node's expert when ``peer_id`` is us (a host cannot open a stream to itself)."""
    return local if str(host.get_id()) == peer_id else None


async def _close(stream: FramedStream, *, graceful: bool) -> None:
    """Close after a terminal message; reset otherwise so the expert stops work at once."""
    with trio.CancelScope(shield=True), trio.move_on_after(2.0):
        if graceful:
            await stream.aclose()
        else:
            await stream.reset()


__all__ = ["ExpertError", "StreamClosed", "cancel_and_collect", "generate", "next_token", "score"]
