"""The OpenAI-compatible ASGI app: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, ``/status``.

A plain ASGI callable (no framework): it needs five routes, and owning the
body reading is what lets it enforce the size cap before buffering anything.
It runs under hypercorn's trio worker, so it awaits the coordinator directly
on the node's trio loop.

Every failure is answered in OpenAI's error format with the matching status
code; nothing a client sends produces a traceback or stops the server.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from typing import Any

import msgspec
import trio

from node.activity import Activity
from node.coordinator import Coordinator, QueryFailed
from node.coordinator.routing import VIRTUAL_PREFIX, model_ids, model_profile
from node.coordinator.strategies import STRATEGIES
from node.logs import get_logger
from protocol import Provenance, QueryChunk, QueryRequest, QueryResult, trace_digest

from . import openai_schema as oai
from . import sse
from .asgi import Handler, Scope, cancel_on_disconnect, send_body, send_json
from .dashboard import Dashboard
from .errors import ApiError, from_code, method_not_allowed, model_not_found, not_found, too_large, unauthorized

log = get_logger(__name__.removeprefix("node."))

MAX_BODY = 1024 * 1024
BODY_READ_TIMEOUT = 30.0  # a client that trickles its body (slowloris) is cut off


class _Disconnected(Exception):
    """The HTTP client went away; nothing to answer."""


class MosaicApi:
    """ASGI app in front of a :class:`Coordinator`.

    ``status`` returns the JSON served at ``GET /status`` (the node's view of the
    network); ``token``, when set, is required as ``Authorization: Bearer``.
    """

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        status: Callable[[], dict[str, Any]] | None = None,
        token: str | None = None,
        max_body: int = MAX_BODY,
        default_timeout: float = 120.0,
        activity: Activity | None = None,
        dashboard: Dashboard | None = None,
    ) -> None:
        self.coordinator = coordinator
        self._activity = activity
        self._dashboard = dashboard
        self._status = status or (lambda: {})
        self._token = token.encode() if token else None
        self._max_body = max_body
        self._default_timeout = default_timeout

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self._dispatch(scope, receive, send)
        except _Disconnected:
            pass
        except ApiError as exc:
            await _send_error(send, exc)
        except Exception:  # a bug here must not take the server (or the node) down
            log.exception("unhandled error serving %s %s", scope.get("method"), scope.get("path"))
            await _send_error(send, ApiError(500, "Internal server error.", "server_error", None, "internal"))

    async def _dispatch(self, scope: Scope, receive: Callable, send: Callable) -> None:
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        if path == "/health":
            await send_json(send, 200, {"ok": True})
            return
        public = self._dashboard.public(path) if self._dashboard is not None else None
        if public is not None:
            if method != "GET":
                raise method_not_allowed(method)
            await public(scope, receive, send)
            return
        routes: dict[str, tuple[str, Handler]] = {
            "/v1/chat/completions": ("POST", self._chat),
            "/v1/completions": ("POST", self._completion),
            "/v1/models": ("GET", self._models),
            "/status": ("GET", self._status_route),
        }
        if path.startswith("/v1/models/"):
            routes[path] = ("GET", self._model)
        if self._dashboard is not None:
            routes.update(self._dashboard.routes(path))
        if path not in routes:
            raise not_found(path)
        self._authorize(scope)
        allowed, handler = routes[path]
        if method != allowed:
            raise method_not_allowed(method)
        await handler(scope, receive, send)

    def _authorize(self, scope: Scope) -> None:
        if self._token is None:
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
            raise unauthorized()

    # ------------------------------------------------------------------ models and status

    def _model_cards(self) -> list[dict[str, Any]]:
        cards: dict[str, dict[str, Any]] = {}
        for name in self.coordinator.strategies():
            strategy = STRATEGIES[name]
            params = {key: {"type": spec.kind.__name__, "default": spec.default, "help": spec.help}
                      for key, spec in strategy.params.items()}
            cards[VIRTUAL_PREFIX + name] = {
                "id": VIRTUAL_PREFIX + name, "object": "model", "created": 0, "owned_by": "mosaic",
                "mosaic": {"kind": "strategy", "strategy": name, "summary": strategy.summary,
                           "cost": strategy.cost, "params": params},
            }
        for candidate in self.coordinator.candidates():
            record = candidate.record
            for model_id in model_ids(record):
                card = cards.setdefault(model_id, {
                    "id": model_id, "object": "model", "created": int(record.issued_at), "owned_by": record.peer_id,
                    "mosaic": {"kind": "expert", "base_model": record.base_model, "tags": list(record.tags),
                               "peers": []},
                })
                card["mosaic"]["peers"].append(record.peer_id)
                profile = model_profile(record, model_id)
                if profile:  # the signed dev scores of this model (self-evaluation); the first peer's win
                    card["mosaic"].setdefault("dev_scores", profile)
        return list(cards.values())

    async def _models(self, scope, receive, send) -> None:
        await send_json(send, 200, {"object": "list", "data": self._model_cards()})

    async def _model(self, scope, receive, send) -> None:
        wanted = scope["path"].rstrip("/")[len("/v1/models/"):]
        for card in self._model_cards():
            if card["id"] == wanted:
                await send_json(send, 200, card)
                return
        raise model_not_found(wanted)

    async def _status_route(self, scope, receive, send) -> None:
        await send_json(send, 200, self._status())

    # ------------------------------------------------------------------ completions

    async def _chat(self, scope, receive, send) -> None:
        body = await self._read_body(scope, receive)
        request = oai.parse(body, oai.ChatCompletionRequest)
        await self._complete(request, chat=True, receive=receive, send=send)

    async def _completion(self, scope, receive, send) -> None:
        body = await self._read_body(scope, receive)
        request = oai.parse(body, oai.CompletionRequest)
        await self._complete(request, chat=False, receive=receive, send=send)

    def _resolve(self, model: str) -> tuple[str, str | None]:
        """(strategy, pinned expert) for an OpenAI ``model``; 404 if the network has no such model."""
        if model.startswith(VIRTUAL_PREFIX):
            strategy = model[len(VIRTUAL_PREFIX):]
            if strategy not in self.coordinator.strategies():
                raise model_not_found(model)
            return strategy, None
        for candidate in self.coordinator.candidates():
            if model == candidate.peer_id or model in model_ids(candidate.record):
                return "route", model
        raise model_not_found(model)

    @asynccontextmanager
    async def _answer(self, query: QueryRequest) -> AsyncIterator[AsyncIterator[QueryChunk | QueryResult]]:
        """The coordinator's events for ``query``, recorded for /metrics and the dashboard."""
        if self._activity is None:
            async with self.coordinator.answer(query) as events:
                yield events
            return
        # Recording starts before the coordinator's channel opens: a deadline or a QueryFailed
        # raised while it opens or closes is counted too.
        with self._activity.record(query, protocol="http") as recorder:
            async with self.coordinator.answer(query) as events, aclosing(recorder.watch(events)) as watched:
                yield watched

    async def _complete(self, request, *, chat: bool, receive, send) -> None:
        strategy, pinned = self._resolve(request.model)
        query = oai.to_query(request, strategy=strategy, model=pinned, default_timeout=self._default_timeout)
        if request.stream:
            await self._stream(request, query, chat=chat, receive=receive, send=send)
            return
        result = await self._answer_whole(query, receive)
        cid = oai.new_id("chatcmpl" if chat else "cmpl")
        body = (oai.chat_completion if chat else oai.text_completion)(cid, request.model, result)
        prov = result.provenance[0] if result.provenance else None
        headers = _provenance_headers(prov, query)
        if result.trace is not None:
            headers.append((b"x-mosaic-trace-digest", trace_digest(result.trace).encode()))
        await send_json(send, 200, body, headers)

    async def _answer_whole(self, query: QueryRequest, receive: Callable) -> QueryResult:
        """The whole answer for a non-streamed request; the client hanging up cancels it.

        Without the disconnect watch, 40 requests dropped after 1 s kept two experts
        generating at full CPU for ~107 s: nobody would ever read those answers.
        """
        result: QueryResult | None = None
        error: ApiError | None = None  # raised after the nursery: trio would wrap it in an ExceptionGroup
        # Unless the answer ends below, the watcher cancelled the nursery (its Cancelled skips the
        # rest of the block): the client is gone.  Left unset, that path raised UnboundLocalError.
        gone = True
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_disconnect, receive, nursery.cancel_scope)
            try:
                with trio.fail_after(query.timeout_s):
                    async with self._answer(query) as events:
                        async for event in events:
                            if isinstance(event, QueryResult):
                                result = event
            except QueryFailed as exc:
                error = from_code(exc.code, exc.message)
            except trio.TooSlowError:
                error = from_code("timeout", f"No answer within {query.timeout_s:g} s.")
            gone = nursery.cancel_scope.cancel_called
            nursery.cancel_scope.cancel()
        if gone:
            raise _Disconnected
        if error is not None:
            raise error
        if result is None:
            raise from_code("internal", "The coordinator finished without a result.")
        return result

    async def _stream(self, request, query: QueryRequest, *, chat: bool, receive, send) -> None:
        """SSE stream.  Headers wait for the first event, so they can name the serving peer and a
        failure before any token is still a proper HTTP error status."""
        cid = oai.new_id("chatcmpl" if chat else "cmpl")
        created = int(time.time())
        include_usage = bool(request.stream_options and request.stream_options.include_usage)
        started = False

        def chunk(text: str, finish: str | None = None, mosaic: dict | None = None, role: bool = False) -> bytes:
            if chat:
                delta = {"role": "assistant", "content": text} if role else ({"content": text} if text else {})
                return sse.event(oai.chat_chunk(cid, request.model, created, delta, finish, mosaic))
            return sse.event(oai.text_chunk(cid, request.model, created, text, finish, mosaic))

        async def body(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        failed_early: ApiError | None = None  # raised after the nursery: trio would wrap it in an ExceptionGroup
        gone = True  # unless the stream ends below: the watcher's cancel skips the rest of the block
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_disconnect, receive, nursery.cancel_scope)
            try:
                with trio.fail_after(query.timeout_s):
                    async with self._answer(query) as events:
                        async for event in events:
                            if not started:
                                prov = event.provenance if isinstance(event, QueryChunk) else (
                                    event.provenance[0] if event.provenance else None)
                                await send({"type": "http.response.start", "status": 200,
                                            "headers": sse.HEADERS + _provenance_headers(prov, query)})
                                started = True
                                if chat:
                                    await body(chunk("", role=True))
                            if isinstance(event, QueryChunk):
                                await body(
                                    chunk(event.text, mosaic={"provenance": oai.provenance_json([event.provenance])})
                                )
                            else:
                                await body(chunk("", oai.finish_reason(event.finish_reason), oai.mosaic_json(event)))
                                if include_usage:
                                    usage = {
                                        "id": cid,
                                        "object": "chat.completion.chunk" if chat else "text_completion",
                                        "created": created,
                                        "model": request.model,
                                        "choices": [],
                                        "usage": oai.usage_json(event),
                                    }
                                    await body(sse.event(usage))
            except (QueryFailed, trio.TooSlowError) as exc:
                error = (from_code(exc.code, exc.message) if isinstance(exc, QueryFailed)
                         else from_code("timeout", f"No complete answer within {query.timeout_s:g} s."))
                if not started:
                    failed_early = error
                else:
                    # Headers are gone: report in-stream, as OpenAI does (the SDK raises APIError on it).
                    await body(sse.event(msgspec.json.decode(error.body())))
            gone = nursery.cancel_scope.cancel_called  # only the disconnect watcher cancels before this
            nursery.cancel_scope.cancel()
        # The last body goes out after the watcher is gone: it makes hypercorn put http.disconnect
        # in our queue, and the watcher's cancel then landed inside hypercorn's close of the
        # connection (at send_eof's checkpoint), leaving the socket open after [DONE].
        if started and not gone:
            await send({"type": "http.response.body", "body": sse.DONE, "more_body": False})
        if failed_early is not None:
            raise failed_early

    # ------------------------------------------------------------------ body

    async def _read_body(self, scope: Scope, receive: Callable) -> bytes:
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self._max_body:
            raise too_large(self._max_body)
        chunks: list[bytes] = []
        size = 0
        try:
            with trio.fail_after(BODY_READ_TIMEOUT):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Disconnected
                    part = message.get("body", b"")
                    size += len(part)
                    if size > self._max_body:
                        raise too_large(self._max_body)
                    chunks.append(part)
                    if not message.get("more_body", False):
                        break
        except trio.TooSlowError:
            raise ApiError(408, "Request body not received in time.", "invalid_request_error", None,
                           "request_timeout") from None
        return b"".join(chunks)


def _provenance_headers(prov: Provenance | None, query: QueryRequest) -> list[tuple[bytes, bytes]]:
    headers = [(b"x-mosaic-request-id", query.request_id.encode()),
               (b"x-mosaic-strategy", query.strategy.encode())]
    if prov is not None:
        headers += [(b"x-mosaic-served-by", _ascii(prov.served_by)), (b"x-mosaic-expert", _ascii(prov.expert)),
                    (b"x-mosaic-model", _ascii(prov.model))]
        if prov.adapter:
            headers.append((b"x-mosaic-adapter", _ascii(prov.adapter)))
        if prov.adapter_cid:
            headers.append((b"x-mosaic-adapter-cid", _ascii(prov.adapter_cid)))
    return headers


def _ascii(value: str) -> bytes:
    # Header values must be latin-1 without control characters; names come from remote records.
    return "".join(c if " " <= c <= "~" else "?" for c in value).encode()


async def _send_error(send: Callable, error: ApiError) -> None:
    headers = []
    if error.retry_after is not None:
        headers.append((b"retry-after", str(int(max(1, error.retry_after))).encode()))
    if error.status in (408, 413):
        # The rest of the body was not read: the connection cannot carry another request.
        headers.append((b"connection", b"close"))
    try:
        await send_body(send, error.status, error.body(), b"application/json", headers)
    except Exception:  # the response had already started, or the client left
        log.debug("could not send error %s", error.status)


async def _lifespan(receive: Callable, send: Callable) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
