"""The dashboard: a static page at ``/`` and the JSON, SSE and metrics routes it reads.

Auth (docs/operators.md): the page and its two static files carry no data and
load without the token; every data route (``/v1/dashboard/*``, ``/metrics``)
follows the API's bearer-token rule.  The page takes the token from the URL
fragment (``/#token=...``: a fragment never reaches the server, its logs or a
Referer) or asks for it, and sends it as ``Authorization: Bearer``.

Everything a peer announces is remote input: the page renders it as text,
never as HTML, and the page's Content-Security-Policy allows only its own script.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from node.activity import Activity
from node.metrics import CONTENT_TYPE, NodeMetrics

from . import sse
from .asgi import Handler, Scope, cancel_on_disconnect, send_body, send_json
from .errors import not_found

if TYPE_CHECKING:
    from node.app import Node
    from node.coordinator import Coordinator

# Peers are pushed when the registry changes (at most once per PEERS_MIN_GAP_S) and at least every
# PEERS_REFRESH_S (load and last-seen ages move without a new record; it also keeps proxies from
# closing a silent stream).
PEERS_MIN_GAP_S = 1.0
PEERS_REFRESH_S = 10.0
# Report files the dashboard may read (a report dir is the operator's, but stays a narrow door).
REPORT_TYPES = {".png": b"image/png", ".svg": b"image/svg+xml", ".md": b"text/markdown; charset=utf-8"}
MAX_REPORT_FILE = 16 * 1024 * 1024

_STATIC = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/dashboard/app.js": ("app.js", b"text/javascript; charset=utf-8"),
    "/dashboard/style.css": ("style.css", b"text/css; charset=utf-8"),
}
_PAGE_HEADERS = [
    (b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; "
                                 b"img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


class Dashboard:
    """Routes of the dashboard for one node; :class:`~node.api.app.MosaicApi` dispatches to it."""

    def __init__(self, node: Node, coordinator: Coordinator, activity: Activity, metrics: NodeMetrics,
                 *, report_dir: str | None = None) -> None:
        self.node = node
        self.coordinator = coordinator
        self.activity = activity
        self.metrics = metrics
        self.report_dir = Path(report_dir).expanduser() if report_dir else None

    # ------------------------------------------------------------------ routing

    def public(self, path: str) -> Handler | None:
        """The static page and its assets (no data in them, so no token)."""
        if path in _STATIC:
            name, content_type = _STATIC[path]
            return lambda scope, receive, send: send_body(send, 200, _static(name), content_type, _PAGE_HEADERS)
        return None

    def routes(self, path: str) -> dict[str, tuple[str, Handler]]:
        """Token-protected routes, in MosaicApi's ``{path: (method, handler)}`` form."""
        routes: dict[str, tuple[str, Handler]] = {
            "/metrics": ("GET", self._metrics),
            "/v1/dashboard/state": ("GET", self._state),
            "/v1/dashboard/events": ("GET", self._events),
        }
        if path.startswith("/v1/dashboard/report/"):
            routes[path] = ("GET", self._report_file)
        return routes

    # ------------------------------------------------------------------ data

    def state(self) -> dict[str, Any]:
        """Everything the page draws: this node, the peers with their full records, queries, usage, report."""
        node = self.node
        return {
            "node": {"peer_id": node.peer_id, "name": node.config.name, "multiaddrs": node.full_multiaddrs()},
            "strategies": list(self.coordinator.strategies()),
            "peers": self.peers(),
            **self.activity.snapshot(),
            "report": self.report(),
            "time": time.time(),
        }

    def peers(self) -> list[dict[str, Any]]:
        now = time.time()
        health = self.coordinator.health
        out = []
        for record in self.node.registry.all():
            entry = self.node.registry.entry(record.peer_id)
            out.append({
                # The whole record, so fields added later (dev scores, ...) show without a change here.
                "record": msgspec.to_builtins(record),
                "self": record.peer_id == self.node.peer_id,
                "source": entry.source if entry else None,
                "last_seen_s": round(now - entry.received_at, 1) if entry else None,
                "expires_in_s": round(record.expires_at() - now, 1),
                **health.snapshot(record.peer_id),  # latency_s, recent_failures (decaying), banned
                "reputation": self.coordinator.reputation.snapshot(record.peer_id),  # demoted, and why
            })
        return out

    def report(self) -> dict[str, Any] | None:
        """The newest evaluation report under the configured dir: its plots and markdown, by name."""
        directory = _latest_report(self.report_dir) if self.report_dir else None
        if directory is None or self.report_dir is None:
            return None
        files = sorted(p.name for p in directory.iterdir() if p.suffix in REPORT_TYPES and p.is_file())
        relative = directory.relative_to(self.report_dir).as_posix()
        prefix = "/v1/dashboard/report/" + ("" if relative == "." else relative + "/")
        return {"name": directory.name, "modified": directory.stat().st_mtime,
                "files": [{"name": name, "url": prefix + name} for name in files]}

    # ------------------------------------------------------------------ handlers

    async def _metrics(self, scope: Scope, receive: Callable, send: Callable) -> None:
        await send_body(send, 200, self.metrics.render(), CONTENT_TYPE.encode())

    async def _state(self, scope: Scope, receive: Callable, send: Callable) -> None:
        await send_json(send, 200, self.state())

    async def _report_file(self, scope: Scope, receive: Callable, send: Callable) -> None:
        path = scope["path"][len("/v1/dashboard/report/"):]
        if self.report_dir is None:
            raise not_found(scope["path"])
        root = self.report_dir.resolve()
        target = (root / path).resolve()
        # Only files of the allowed types inside the report dir (no "..", no symlink out of it).
        if (not target.is_relative_to(root) or target.suffix not in REPORT_TYPES or not target.is_file()
                or target.stat().st_size > MAX_REPORT_FILE):
            raise not_found(scope["path"])
        data = await trio.to_thread.run_sync(target.read_bytes)
        await send_body(send, 200, data, REPORT_TYPES[target.suffix], [(b"x-content-type-options", b"nosniff")])

    async def _events(self, scope: Scope, receive: Callable, send: Callable) -> None:
        """SSE: one ``state`` event, then ``query``/``usage`` events as they happen and ``peers`` on change."""
        await send({"type": "http.response.start", "status": 200, "headers": sse.HEADERS})

        async def emit(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        registry = self.node.registry
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cancel_on_disconnect, receive, nursery.cancel_scope)
            with self.activity.subscribe() as feed:
                await emit(sse.event({"type": "state", "state": self.state()}))
                seen, pushed = registry.version, time.monotonic()
                while True:
                    with trio.move_on_after(PEERS_MIN_GAP_S):
                        await emit(sse.event(await feed.receive()))
                    now = time.monotonic()
                    changed = registry.version != seen and now - pushed >= PEERS_MIN_GAP_S
                    if changed or now - pushed >= PEERS_REFRESH_S:
                        seen, pushed = registry.version, now
                        await emit(sse.event({"type": "peers", "peers": self.peers(), "time": time.time()}))


def _latest_report(root: Path) -> Path | None:
    """``root`` or its newest subdirectory (two levels deep) that holds a plot or a report.md."""
    if not root.is_dir():
        return None
    candidates = [root, *(p for p in root.glob("*") if p.is_dir()), *(p for p in root.glob("*/*") if p.is_dir())]
    holding = [d for d in candidates if any(f.suffix in (".png", ".svg") or f.name == "report.md"
                                            for f in d.iterdir() if f.is_file())]
    return max(holding, key=lambda d: d.stat().st_mtime, default=None)


_cache: dict[str, bytes] = {}


def _static(name: str) -> bytes:
    data = _cache.get(name)
    if data is None:
        data = _cache[name] = resources.files("node.api").joinpath("static", name).read_bytes()
    return data
