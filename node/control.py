"""The loopback control endpoint of a running node, for local CLI commands on its data dir.

``publish`` and ``pin`` write to the block store of the data dir themselves (block
writes are atomic) and then ask the node holding the data-dir lock to provide the
new root (``{"op": "provide", "cid": ...}``) or to stop (``unprovide``), instead
of starting a second host with the node's identity.  ``self-eval`` asks the node to
score its expert on task files now (``{"op": "self_eval", "tasks": [...], "limit": N[, "max_tokens": M]}``):
the node re-signs and re-announces its capability record with the new ``evals`` and
answers with them.  One JSON line each way, on 127.0.0.1 only, authenticated by a
random token that only ``<data dir>/node.json`` (mode 0600) holds.  See
:mod:`node.local_node` for the client side.
"""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING

import msgspec
import trio

from protocol.cid import parse_cid
from protocol.errors import ProtocolError

from .local_node import MAX_CONTROL_LINE, SELF_EVAL_TIMEOUT
from .logs import event, get_logger
from .storage import StorageService

if TYPE_CHECKING:
    from .app import Node

log = get_logger("control")

REQUEST_TIMEOUT = 5.0  # to read the request, and for the quick ops (provide, unprovide)
MAX_SELF_EVAL_LIMIT = 1000  # items per task: the record says n, a spot-checker re-asks some of them
MAX_SELF_EVAL_TOKENS = 1024  # new tokens per reply (the record says how many; a spot check asks the same)


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
                with trio.move_on_after(REQUEST_TIMEOUT) as reading:
                    try:
                        line = await _read_line(stream)
                    except ValueError as exc:  # too long: say so, and let the client read it
                        await stream.send_all(json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")
                        await _drain(stream)
                        return
                if reading.cancelled_caught:
                    return
                # A self-evaluation runs for minutes (generations on the node's own worker).
                slow = b'"self_eval"' in line
                with trio.move_on_after(SELF_EVAL_TIMEOUT if slow else REQUEST_TIMEOUT):
                    try:
                        reply = await self._answer(line)
                    except ValueError as exc:
                        reply = {"ok": False, "error": str(exc)}
                    except Exception as exc:  # e.g. a store error: the client hears it, the node lives on
                        event(log, "control_failed", error=f"{type(exc).__name__}: {exc}"[:200])
                        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    await stream.send_all(json.dumps(reply).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away

    async def _answer(self, line: bytes) -> dict[str, object]:
        try:
            request = json.loads(line)
        except ValueError:
            raise ValueError("the request is not JSON") from None
        if not isinstance(request, dict) or not secrets.compare_digest(str(request.get("token", "")), self.token):
            raise ValueError("bad token")
        node = self._node
        if node is None:
            raise ValueError("the node is still starting")
        op = request.get("op")
        if op == "self_eval":
            return await self._self_eval(node, request)
        storage = node.service(StorageService)
        if storage is None:
            raise ValueError("this node runs no storage service")
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

    async def _self_eval(self, node: Node, request: dict[str, object]) -> dict[str, object]:
        """Score the node's expert on the named tasks now; the new scores go out in its signed record."""
        from .expert import ExpertService
        from .expert.serve.self_eval import SelfEvalError, task_path

        expert = node.service(ExpertService)
        if expert is None or expert.local is None:
            raise ValueError("this node serves no expert (started with --no-expert?): nothing to evaluate")
        tasks, limit, max_tokens = request.get("tasks"), request.get("limit", 20), request.get("max_tokens")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ValueError("tasks: expected a non-empty list of task names")
        if len(tasks) > 8:
            raise ValueError("at most 8 tasks (the record holds 16 scores)")
        if type(limit) is not int or not 1 <= limit <= MAX_SELF_EVAL_LIMIT:
            raise ValueError(f"limit: expected an integer in [1, {MAX_SELF_EVAL_LIMIT}]")
        if max_tokens is not None and (type(max_tokens) is not int or not 1 <= max_tokens <= MAX_SELF_EVAL_TOKENS):
            raise ValueError(f"max_tokens: expected an integer in [1, {MAX_SELF_EVAL_TOKENS}]")
        try:  # every name first: a typo must not cost the minutes the other tasks take
            for name in tasks:
                task_path(name, expert.config.tasks_dir)
        except SelfEvalError as exc:
            raise ValueError(str(exc)) from None
        event(log, "control_request", op="self_eval", tasks=",".join(tasks), limit=limit)
        scores = await expert.self_evaluate(node, list(tasks), limit=limit, max_tokens=max_tokens)
        record = node.own_record()
        return {"ok": True, "peer_id": node.peer_id, "seq": record.seq if record is not None else None,
                "evals": [msgspec.to_builtins(s) for s in scores]}


async def _drain(stream: trio.SocketStream) -> None:
    """Read what the client still sends (bounded) before closing.

    Closing a socket with unread input makes the kernel answer with a reset, and
    a reset can destroy our reply before the client has read it.
    """
    await stream.send_eof()
    left = 16 * MAX_CONTROL_LINE
    with trio.move_on_after(1.0):
        while left > 0:
            chunk = await stream.receive_some(MAX_CONTROL_LINE)
            if not chunk:
                return
            left -= len(chunk)


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
