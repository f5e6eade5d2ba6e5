"""The node's live state as Prometheus families, read at every scrape of ``/metrics``.

The registry, the storage service and the expert's worker keep plain counters
(they never import Prometheus); this module, above them all, turns them into
metric families.  Event metrics (requests, tokens, latencies) are moved by
:mod:`node.activity` instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric

from node.metrics import NodeMetrics, counter_family, gauge_family

if TYPE_CHECKING:
    from node.app import Node


def bind_node_state(metrics: NodeMetrics, node: Node) -> None:
    """Register ``node``'s state with ``metrics``."""
    metrics.add_source("node", lambda: node_state(node))


def node_state(node: Node) -> Iterable[Metric]:
    from node.expert import ExpertService
    from node.storage import StorageService

    registry = node.registry
    yield gauge_family("mosaic_peers", "Peers with a valid capability record in this node's registry (itself included)",
                       {(): len(registry)})
    yield gauge_family("mosaic_experts", "Peers that serve a model", {(): len(registry.experts())})
    # Registry.rejected counts each rejection twice: by reason and by "source:reason".
    by_reason: dict[tuple[str, ...], float] = {}
    by_source: dict[tuple[str, ...], float] = {}
    for key, count in registry.rejected.items():
        source, sep, reason = key.partition(":")
        if sep:
            by_source[(source, reason)] = count
        else:
            by_reason[(key,)] = count
    yield counter_family("mosaic_records_rejected", "Capability records refused, by reason", by_reason, ("reason",))
    yield counter_family("mosaic_records_rejected_by_source", "Capability records refused, by source and reason",
                         by_source, ("source", "reason"))

    storage = node.service(StorageService)
    if storage is not None:
        yield counter_family("mosaic_storage_served_bytes", "Block bytes served to peers on /mosaic/blocks/1",
                             {(): storage.server.stats.bytes_served})
        yield counter_family("mosaic_storage_fetched_bytes", "Block bytes fetched from peers",
                             {(): storage.bytes_fetched})

    expert = node.service(ExpertService)
    worker = expert.worker if expert is not None else None
    if worker is not None:
        yield gauge_family("mosaic_expert_queue_depth", "Inference jobs waiting for a batch slot",
                           {(): worker.queue_depth})
        yield gauge_family("mosaic_expert_active", "Generations running in the current batch", {(): worker.active})
        yield counter_family("mosaic_busy_rejections", "Inference jobs refused because the queue was full",
                             {(): worker.busy_rejections})
        yield counter_family("mosaic_expert_decode_steps", "Batched decode steps the worker ran",
                             {(): worker.steps})
