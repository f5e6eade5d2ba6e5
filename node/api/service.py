"""The HTTP API as a node :class:`Service`: hypercorn's trio worker in the node's nursery.

Running hypercorn with ``hypercorn.trio.serve`` (not in a thread, not under
asyncio) keeps the HTTP server inside the node's structured lifecycle: it
starts with the node, stops when the node's nursery is cancelled, and its
handlers await the coordinator on the same trio loop as libp2p.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from node.config import HttpConfig
from node.coordinator.executor import Coordinator
from node.coordinator.service import QueryService
from node.logs import get_logger

from .app import MAX_BODY, MosaicApi
from .dashboard import Dashboard
from .node_metrics import bind_node_state

if TYPE_CHECKING:
    from node.app import Node

log = get_logger(__name__.removeprefix("node."))


def network_status(node: Node, coordinator: Coordinator) -> dict[str, Any]:
    """The node's view of the network for ``GET /status`` and ``python -m node status``."""
    now = time.time()
    peers = []
    for record in node.registry.all():
        peers.append({
            "peer_id": record.peer_id, "name": record.name, "description": record.description,
            "tags": list(record.tags), "base_model": record.base_model,
            "adapters": [a.name for a in record.adapters], "device": record.device,
            "load": record.load, "queue_depth": record.queue_depth,
            **coordinator.health.snapshot(record.peer_id),
            # Evidence of lying (spot checks, claims, consensus) and whether and why it is demoted.
            "reputation": coordinator.reputation.snapshot(record.peer_id),
            "expires_in_s": round(record.expires_at() - now, 1),
            "multiaddrs": list(record.multiaddrs),
            "self": record.peer_id == node.peer_id,
        })
    return {
        "peer_id": node.peer_id,
        "multiaddrs": [str(a) for a in node.full_multiaddrs()],
        "strategies": list(coordinator.strategies()),
        "peers": peers,
    }


class HttpService:
    """Serves :class:`MosaicApi` on ``config.listen`` (``HOST:PORT``; port 0 picks a free one),
    answering with the coordinator of ``queries`` (the node's query service, started before it)."""

    def __init__(self, config: HttpConfig, *, queries: QueryService, max_body: int = MAX_BODY) -> None:
        self._config = config
        self._queries = queries
        self._max_body = max_body
        self.url: str | None = None  # e.g. "http://127.0.0.1:8080", once started

    def record_fields(self) -> dict[str, object]:
        return {}

    async def run(self, node: Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        coordinator = self._queries.coordinator
        if coordinator is None:
            raise RuntimeError("the HTTP API answers with the query service's coordinator: start that service first")
        activity = node.activity
        bind_node_state(node.metrics, node)
        dashboard = Dashboard(node, coordinator, activity, node.metrics, report_dir=self._config.report_dir)
        app = MosaicApi(coordinator, status=lambda: network_status(node, coordinator), token=self._config.token,
                        max_body=self._max_body, activity=activity, dashboard=dashboard)
        config = Config()
        config.bind = [self._config.listen]
        config.accesslog = None
        config.errorlog = logging.getLogger("hypercorn.error")
        config.graceful_timeout = 2.0
        config.keep_alive_timeout = 30.0
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, config))
            self.url = binds[0]
            log.info("event=http_listening url=%s auth=%s", self.url, "token" if self._config.token else "none")
            task_status.started()
