"""``/mosaic/query/1`` server: any peer answers clients' queries as their coordinator.

Exchange (docs/api.md): the client sends one :class:`QueryRequest`; the peer
replies with :class:`QueryChunk` frames (only when ``stream`` is set) and a
final :class:`QueryResult`, or one :class:`ErrorMessage`.  The client closing
or resetting the stream cancels the query (and the expert's generation).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager, aclosing, nullcontext
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from node.activity import Activity, QueryRecorder
from node.logs import event, get_logger
from node.net.streams import FramedStream, StreamClosed, StreamPaths, serve
from protocol import (
    QUERY_PROTOCOL,
    ErrorMessage,
    GenerateEvent,
    GenerateRequest,
    GenerateResult,
    NextTokenRequest,
    NextTokenResult,
    ProtocolError,
    QueryChunk,
    QueryRequest,
    ScoreRequest,
    ScoreResult,
    SessionOpen,
    is_error_code,
)

from .calls import QueryFailed
from .executor import Coordinator
from .requester import current_requester

if TYPE_CHECKING:
    from libp2p.abc import IHost

    from node.app import Node
    from node.expert.serve.local import LocalExpert
    from node.expert.serve.sessions import SessionHost

log = get_logger("coordinator.service")

# A query may stream for minutes; the request itself must arrive quickly (slowloris).
MAX_QUERY_SECONDS = 3600.0
FIRST_MESSAGE_TIMEOUT = 10.0

def build_coordinator(node: Node) -> Coordinator:
    """A coordinator for ``node``: its registry's experts, asked over ``/mosaic/infer/1`` from its
    host (its own expert directly), merging adapters with its services.  A node has one, built by
    its :class:`QueryService` and shared with the HTTP API, so both see the same latency and
    failure observations."""
    coordinator = Coordinator(
        node.registry.experts,
        InferTransport(node.host, on_reached=node.registry.mark_reachable, local=partial(local_expert, node),
                       paths=node.stream_paths),
        verified=node.registry.verified_peers,
        local_id=node.peer_id,
    )
    from .merging import NodeMerging  # imports the expert package: only when a node needs it

    coordinator.merges = NodeMerging(node, coordinator.embedder)
    return coordinator


def local_expert(node: Node) -> tuple[LocalExpert, SessionHost] | None:
    """``node``'s own expert and its sessions while it serves them (None: it serves none)."""
    from node.expert import ExpertService  # only asked for a call to this very node

    service = node.service(ExpertService)
    return service.serving() if service is not None else None


class InferTransport:
    """The pool's transport in a node: the ``/mosaic/infer/1`` client on the node's host.

    The client is imported per call, not at start: a coordinator-only node never
    loads the expert package.  Requests to our own peer id are served by the
    local worker (a host cannot dial itself).
    """

    def __init__(self, host: IHost, *, on_reached: Callable[[str], object] | None = None,
                 local: Callable[[], tuple[LocalExpert, SessionHost] | None] = lambda: None,
                 paths: StreamPaths | None = None) -> None:
        self._host = host
        self._paths = paths  # the node's stream paths: relay circuits, and how each call went
        self._on_reached = on_reached  # told of every expert that answered (keeps it verified)
        self._local = local  # this node's expert and its sessions, while it serves them

    def _own(self, peer_id: str) -> tuple[LocalExpert, SessionHost] | None:
        return self._local() if peer_id == str(self._host.get_id()) else None

    async def generate(
        self, peer_id: str, request: GenerateRequest
    ) -> AsyncGenerator[GenerateEvent, None]:
        from node.expert.remote.client import generate

        own = self._own(peer_id)
        async with aclosing(generate(self._host, peer_id, request, local=own and own[0], paths=self._paths)) as events:
            async for message in events:
                if isinstance(message, GenerateResult) and self._on_reached is not None:
                    self._on_reached(peer_id)
                yield message

    def path(self, peer_id: str) -> str:
        """How the last stream to ``peer_id`` went: ``direct`` or ``relayed``; ``local`` for ourselves."""
        from node.net.circuits import path_to

        if peer_id == str(self._host.get_id()):
            return "local"
        return (self._paths and self._paths.last(peer_id)) or path_to(self._host, peer_id)

    async def score(self, peer_id: str, request: ScoreRequest, timeout: float) -> ScoreResult:
        from node.expert.remote.client import score

        own = self._own(peer_id)
        return await score(self._host, peer_id, request, timeout=timeout, local=own and own[0], paths=self._paths)

    def open_session(self, peer_id: str, request: SessionOpen, timeout: float) -> AbstractAsyncContextManager[Any]:
        from node.expert.remote.session_client import open_session

        own = self._own(peer_id)
        return open_session(self._host, peer_id, request, timeout=timeout, local=own and own[1], paths=self._paths)

    async def next_token(self, peer_id: str, request: NextTokenRequest, timeout: float) -> NextTokenResult:
        from node.expert.remote.client import next_token

        own = self._own(peer_id)
        return await next_token(self._host, peer_id, request, timeout=timeout, local=own and own[0],
                                paths=self._paths)


async def answer_stream(coordinator: Coordinator, stream: FramedStream, activity: Activity | None = None) -> None:
    """Serve one query on ``stream``; failures become one typed ErrorMessage.

    The client closing or resetting the stream (Ctrl-C, a crash) cancels the query
    at once: a strategy may not send anything for a minute (a debate's rounds), so a
    watcher reads the stream meanwhile instead of waiting for a send to fail.
    """
    request = await stream.receive(QueryRequest)
    current_requester.set(stream.remote_peer)  # quotas on what it makes this node fetch (requester.py)
    exchange = _Exchange()
    client_left = False
    async with trio.open_nursery() as nursery:

        async def watch_client() -> None:
            nonlocal client_left
            try:  # the client sends nothing after its request: anything that returns here means it left
                await stream.receive()
            except (StreamClosed, ProtocolError):
                pass
            if not exchange.replied:  # (a client closes its side once it has the result)
                client_left = True
                nursery.cancel_scope.cancel()

        nursery.start_soon(watch_client)
        await _answer(coordinator, stream, request, activity, exchange)
        nursery.cancel_scope.cancel()
    if client_left:
        event(log, "query_abandoned", request_id=request.request_id, strategy=request.strategy,
              peer=stream.remote_peer)


class _Exchange:
    replied = False  # the final QueryResult or ErrorMessage went out


async def _answer(coordinator: Coordinator, stream: FramedStream, request: QueryRequest,
                  activity: Activity | None, exchange: _Exchange) -> None:
    try:
        with trio.fail_after(request.timeout_s), _recorded(activity, request) as recorder:
            async with coordinator.answer(request) as answer:
                watched = answer if recorder is None else recorder.watch(answer)
                async with aclosing(watched) as events:
                    async for event in events:
                        if isinstance(event, QueryChunk) and not request.stream:
                            continue
                        exchange.replied = not isinstance(event, QueryChunk)
                        await stream.send(event)
    except QueryFailed as exc:
        code = exc.code if is_error_code(exc.code) else "internal"
        exchange.replied = True
        await stream.send(ErrorMessage(code=code, message=exc.message[:2048], request_id=request.request_id))
    except trio.TooSlowError:
        exchange.replied = True
        await stream.send(ErrorMessage(code="timeout", message=f"no answer within {request.timeout_s:g} s",
                                       request_id=request.request_id))


def _recorded(activity: Activity | None, request: QueryRequest) -> AbstractContextManager[QueryRecorder | None]:
    """Record the query for /metrics and the dashboard (around the coordinator's whole channel)."""
    return nullcontext() if activity is None else activity.record(request, protocol="libp2p")


class QueryService:
    """Registers the ``/mosaic/query/1`` handler on the node's host for the node's lifetime."""

    def __init__(self, *, max_per_peer: int = 4, max_total: int = 64) -> None:
        self._max_per_peer = max_per_peer
        self._max_total = max_total
        # The node's coordinator, once running (the HTTP API is handed this service and uses it too).
        self.coordinator: Coordinator | None = None

    def record_fields(self) -> dict[str, object]:
        return {}

    async def run(self, node: Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        coordinator = self.coordinator = build_coordinator(node)
        serve(node.host, QUERY_PROTOCOL, partial(answer_stream, coordinator, activity=node.activity),
              allowlist=node.allowlist,
              first_message_timeout=FIRST_MESSAGE_TIMEOUT, deadline=MAX_QUERY_SECONDS + 5.0,
              max_per_peer=self._max_per_peer, max_total=self._max_total)
        task_status.started()
        await trio.sleep_forever()
