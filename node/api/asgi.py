"""The ASGI plumbing the HTTP API and the dashboard share: whole responses and the disconnect watch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import msgspec
import trio

# An ASGI scope, read-only (hypercorn passes TypedDicts, which are Mappings, not dicts).
Scope = Mapping[str, Any]
Handler = Callable[[Scope, Callable, Callable], Awaitable[None]]

_json = msgspec.json.Encoder()


async def send_body(send: Callable, status: int, body: bytes, content_type: bytes,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """One whole response: ``body`` with its type and length, and ``headers``."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
                + (headers or [])})
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Callable, status: int, payload: object,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send_body(send, status, _json.encode(payload), b"application/json", headers)


async def cancel_on_disconnect(receive: Callable, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` when the client goes away (run it once the request body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
