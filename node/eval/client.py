"""How the harness talks to a network: the OpenAI-compatible HTTP API or ``/mosaic/query/1``.

Both clients answer the same two questions -- which models does the network offer, and what
does one of them reply to one prompt -- and return plain ``Reply`` values with the cost fields
the report needs.  The HTTP client is what any operator can point at a node; the libp2p client
needs no HTTP port (``--peer``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

VIRTUAL_PREFIX = "mosaic/"


class QueryError(Exception):
    """A query the network refused or failed (the message says what the network said)."""


class NetworkUnavailable(Exception):
    """The peer or HTTP endpoint could not be reached at all."""


@dataclass(frozen=True)
class ModelInfo:
    """One model the network offers: an expert (pin ``id``) or a strategy (``mosaic/<name>``)."""

    id: str
    kind: str  # "expert" | "strategy"
    base_model: str = ""
    tags: tuple[str, ...] = ()
    description: str = ""
    peers: tuple[str, ...] = ()
    dev_scores: tuple[tuple[str, float], ...] = ()  # (task, accuracy) its signed self-evaluation claims


@dataclass(frozen=True)
class Reply:
    """A successful answer and what it cost; ``trace`` is the strategy's trace when the network sends one."""

    text: str
    seconds: float
    finish_reason: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    provenance: list[dict[str, Any]] = field(default_factory=list)
    trace: dict[str, Any] | None = None
    trace_digest: str | None = None


class NetworkClient(Protocol):
    async def models(self) -> list[ModelInfo]: ...

    async def ask(self, model: str, prompt: str, max_tokens: int, temperature: float, timeout: float,
                  tags: tuple[str, ...] = ()) -> Reply: ...


# ------------------------------------------------------------------------------------ HTTP


def raw_prompt(prompt: str) -> str:
    """The chat prompt as plain text for a model without a chat template, cued to answer."""
    return f"{prompt}\nAnswer:"


class HttpClient:
    """``POST /v1/chat/completions`` with ``model`` = an expert id or ``mosaic/<strategy>``."""

    def __init__(self, base_url: str, token: str | None = None, max_connections: int = 64) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.base_url = self.base_url.removesuffix("/v1")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, limits=limits, timeout=30.0)
        self._raw_models: set[str] = set()  # experts without a chat template: asked through /v1/completions

    async def _post(self, path: str, body: dict[str, Any], timeout: float) -> tuple[int, Any]:
        import httpx

        try:
            response = await self._http.post(path, json=body, timeout=timeout + 15)
        except httpx.TimeoutException:
            raise QueryError(f"no HTTP answer within {timeout + 15:g} s") from None
        except httpx.HTTPError as exc:
            raise NetworkUnavailable(f"POST {self.base_url}{path} failed: {exc!r}") from None
        try:
            return response.status_code, response.json()
        except ValueError:
            raise QueryError(f"HTTP {response.status_code}: not JSON: {response.text[:200]}") from None

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _get(self, path: str) -> Any:
        import httpx

        try:
            reply = await self._http.get(path)
        except httpx.HTTPError as exc:
            raise NetworkUnavailable(f"GET {self.base_url}{path} failed: {exc!r}") from None
        if reply.status_code != 200:
            raise NetworkUnavailable(f"GET {self.base_url}{path} answered {reply.status_code}: {reply.text[:300]}")
        return reply.json()

    async def models(self) -> list[ModelInfo]:
        cards = (await self._get("/v1/models")).get("data", [])
        try:
            status = await self._get("/status")
        except NetworkUnavailable:
            status = {}
        descriptions = {p.get("peer_id"): p.get("description", "") for p in status.get("peers", [])}
        out = []
        for card in cards:
            info = card.get("mosaic", {})
            kind = info.get("kind", "strategy" if card["id"].startswith(VIRTUAL_PREFIX) else "expert")
            peers = tuple(info.get("peers", ()))
            out.append(ModelInfo(
                id=card["id"], kind=kind, base_model=info.get("base_model", ""), tags=tuple(info.get("tags", ())),
                description=" ".join(sorted({descriptions.get(p, "") for p in peers} - {""})), peers=peers,
                dev_scores=tuple(sorted((str(k), float(v)) for k, v in (info.get("dev_scores") or {}).items())),
            ))
        return out

    async def ask(self, model: str, prompt: str, max_tokens: int, temperature: float, timeout: float,
                  tags: tuple[str, ...] = ()) -> Reply:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": max_tokens,
            "temperature": temperature,
            "timeout": timeout,
        }
        if tags:
            body["tags"] = list(tags)
        started = time.monotonic()
        raw = model in self._raw_models
        if raw:
            body = {**{k: v for k, v in body.items() if k != "messages"}, "prompt": raw_prompt(prompt)}
        status, payload = await self._post("/v1/completions" if raw else "/v1/chat/completions", body, timeout)
        if status == 400 and not raw and not model.startswith(VIRTUAL_PREFIX) and "no chat template" in str(payload):
            # A base model (e.g. gemma-3-270m) has no chat template: ask it with a raw prompt instead.
            self._raw_models.add(model)
            return await self.ask(model, prompt, max_tokens, temperature, timeout, tags)
        seconds = time.monotonic() - started
        if status != 200:
            error = payload.get("error", {}) if isinstance(payload, dict) else {}
            raise QueryError(f"HTTP {status} {error.get('code', '')}: {error.get('message', '')}".strip())
        choice = payload["choices"][0]
        usage = payload.get("usage") or {}
        mosaic = payload.get("mosaic") or {}
        text = choice["text"] if raw else choice["message"]["content"]
        return Reply(
            text=text or "", seconds=seconds, finish_reason=choice.get("finish_reason") or "",
            prompt_tokens=int(usage.get("prompt_tokens", 0)), completion_tokens=int(usage.get("completion_tokens", 0)),
            provenance=list(mosaic.get("provenance", [])), trace=mosaic.get("trace"),
            trace_digest=mosaic.get("trace_digest"),
        )


# ------------------------------------------------------------------------------------ libp2p


class PeerClient:
    """``/mosaic/query/1`` through a throw-away client host (like ``node query``)."""

    def __init__(self, host: Any, peer_id: str) -> None:
        self._host = host
        self._peer_id = peer_id

    async def models(self) -> list[ModelInfo]:
        from node.coordinator.routing import model_profile
        from node.net.exchange import fetch_table
        from protocol import ProtocolError, verify_record

        signed = await fetch_table(self._host, self._peer_id, None, timeout=15.0)
        now = time.time()
        by_id: dict[str, ModelInfo] = {}
        for item in signed:
            try:
                record = verify_record(item, now)
            except ProtocolError:
                continue
            if not record.base_model:
                continue  # a coordinator-only node serves no model
            ids = [record.name] + [f"{record.name}/{a.name}" for a in record.adapters]
            for model_id in ids:
                prev = by_id.get(model_id)
                peers = (prev.peers if prev else ()) + (record.peer_id,)
                scores = prev.dev_scores if prev and prev.dev_scores else tuple(
                    sorted(model_profile(record, model_id).items()))
                by_id[model_id] = ModelInfo(model_id, "expert", record.base_model, tuple(record.tags),
                                            record.description, peers, scores)
        # libp2p offers no model list for strategies; ``route`` always exists, others are named by the caller.
        return [ModelInfo(VIRTUAL_PREFIX + "route", "strategy"), *by_id.values()]

    async def ask(self, model: str, prompt: str, max_tokens: int, temperature: float, timeout: float,
                  tags: tuple[str, ...] = ()) -> Reply:
        from contextlib import aclosing

        import msgspec
        import trio

        import protocol
        from node.coordinator.client import ask
        from node.coordinator.executor import QueryFailed

        fields: dict[str, Any] = {
            "v": protocol.PROTOCOL_VERSION, "t": "query", "request_id": f"eval-{uuid.uuid4().hex[:20]}",
            "messages": [{"role": "user", "content": prompt}],
            "sampling": {"max_new_tokens": max_tokens, "temperature": temperature},
            "timeout_s": timeout, "stream": False, "tags": list(tags),
        }
        if model.startswith(VIRTUAL_PREFIX):
            fields["strategy"] = model[len(VIRTUAL_PREFIX):]
        else:
            fields["strategy"], fields["model"] = "route", model
        request = protocol.decode(msgspec.msgpack.encode(fields), protocol.QueryRequest)
        started = time.monotonic()
        result = None
        try:
            with trio.fail_after(timeout + 15):
                async with aclosing(ask(self._host, self._peer_id, request)) as events:
                    async for event in events:
                        if isinstance(event, protocol.QueryResult):
                            result = event
        except QueryFailed as exc:
            raise QueryError(f"{exc.code}: {exc.message}") from None
        except trio.TooSlowError:
            raise QueryError(f"no answer within {timeout + 15:g} s") from None
        if result is None:
            raise QueryError("the peer closed the stream without a result")
        data = msgspec.to_builtins(result)
        return Reply(
            text=result.text, seconds=time.monotonic() - started, finish_reason=result.finish_reason,
            prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens,
            provenance=list(data.get("provenance", [])), trace=data.get("trace"),
            trace_digest=protocol.trace_digest(result.trace) if result.trace is not None else None,
        )


@asynccontextmanager
async def open_client(*, http: str | None = None, peer: str | None = None,
                      token: str | None = None) -> AsyncIterator[NetworkClient]:
    """A client for ``--http URL`` or ``--peer MULTIADDR`` (exactly one), closed on exit."""
    if (http is None) == (peer is None):
        raise ValueError("give exactly one of http= and peer=")
    if http is not None:
        client = HttpClient(http, token)
        try:
            yield client
        finally:
            await client.aclose()
        return
    assert peer is not None  # exactly one of http and peer, checked above
    from node.net.discovery import DialError, dial
    from node.net.host import build_host, listen_multiaddrs
    from node.net.keys import libp2p_key_pair
    from protocol import Identity

    listen = ["/ip4/127.0.0.1/tcp/0"]
    host = build_host(libp2p_key_pair(Identity.generate()), listen)
    async with host.run(listen_addrs=listen_multiaddrs(listen)):
        try:
            peer_id = await dial(host, peer)
        except DialError as exc:
            raise NetworkUnavailable(str(exc)) from None
        yield PeerClient(host, peer_id)
