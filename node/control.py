"""The loopback control endpoint of a running node, for local CLI commands on its data dir.

``publish`` and ``pin`` write to the block store of the data dir themselves (block
writes are atomic) and then ask the node holding the data-dir lock to provide the
new root (``{"op": "provide", "cid": ...}``) or to stop (``unprovide``), instead
of starting a second host with the node's identity.  One JSON line each way, on
127.0.0.1 only, authenticated by a random token that only ``<data dir>/node.json``
(mode 0600) holds.  See :mod:`node.local_node` for the client side.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING

import trio

from protocol.cid import parse_cid
from protocol.errors import ProtocolError

from .local_node import MAX_CONTROL_LINE
from .logs import event, get_logger
from .storage import StorageService

if TYPE_CHECKING:
    from .app import Node

log = get_logger("control")

REQUEST_TIMEOUT = 5.0


class ControlService:
    """Implements :class:`node.app.Service`; ``address`` and ``token`` go into ``node.json``."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(16)
        self.address: str | None = None
        self._node: Node | None = None

    def record_fields(self) -> dict[str, object]:
        return {}

    async def run(self, node: Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._node = node
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, self._handle, listeners)
            task_status.started()

    async def _handle(self, stream: trio.SocketStream) -> None:
        """One request per connection; nothing a client sends or does can stop the node."""
        try:
            async with stream:
                with trio.move_on_after(REQUEST_TIMEOUT):
                    try:
                        reply = await self._answer(await _read_line(stream))
                    except ValueError as exc:
                        reply = {"ok": False, "error": str(exc)}
                    except Exception as exc:  # e.g. a store error: the client hears it, the node lives on
                        event(log, "control_failed", error=f"{type(exc).__name__}: {exc}"[:200])
                        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    await stream.send_all(json.dumps(reply).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away

    async def _answer(self, line: bytes) -> dict[str, object]:
        request = json.loads(line)
        if not isinstance(request, dict) or not secrets.compare_digest(str(request.get("token", "")), self.token):
            raise ValueError("bad token")
        node = self._node
        storage = node.service(StorageService) if node is not None else None
        if node is None or storage is None:
            raise ValueError("this node runs no storage service")
        op = request.get("op")
        try:
            cid = parse_cid(str(request.get("cid", "")))
        except ProtocolError as exc:
            raise ValueError(f"bad cid: {exc}") from None
        if op == "provide":
            if await trio.to_thread.run_sync(storage.store.missing, cid):
                raise ValueError(f"{cid} is not complete in this node's block store")
            await storage.announce(cid)
        elif op == "unprovide":
            storage.stop_providing(cid)
        else:
            raise ValueError(f"unknown op {op!r}")
        event(log, "control_request", op=op, cid=str(cid))
        return {"ok": True, "peer_id": node.peer_id}


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(MAX_CONTROL_LINE)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_CONTROL_LINE:
            raise ValueError("request too long")
    return data.split(b"\n", 1)[0]
