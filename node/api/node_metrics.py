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

    yield from nat_state(node)

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


def nat_state(node: Node) -> Iterable[Metric]:
    """Reachability, relay reservations, streams by path (direct / relayed), the relay service (issue 20)."""
    nat = node.nat
    state = nat.reachability.state
    yield gauge_family("mosaic_reachability", "AutoNAT's verdict about this node (1 for the current state)",
                       {(s,): float(s == state) for s in ("unknown", "public", "private")}, ("state",))
    yield gauge_family("mosaic_relay_reservations", "Relay reservations this node holds",
                       {(): len(nat.keeper.reservations)})
    opened = node.stream_paths.opened
    yield counter_family("mosaic_streams_opened", "Streams this node opened to peers, by path",
                         {(path,): float(opened.get(path, 0)) for path in ("direct", "relayed")}, ("path",))
    if node.config.net.relay_service:
        stats = nat.relay.stats
        yield gauge_family("mosaic_relay_service_reservations", "Reservations this relay grants now",
                           {(): nat.relay.reservation_count()})
        yield gauge_family("mosaic_relay_circuits_active", "Circuits open through this relay",
                           {(): stats.circuits_active})
        yield counter_family("mosaic_relay_circuits", "Circuits through this relay, by outcome",
                             {("opened",): stats.circuits_opened, ("refused",): stats.circuits_refused}, ("outcome",))
        yield counter_family("mosaic_relay_reservations_refused", "Reservations this relay refused (limits)",
                             {(): stats.reservations_refused})
        yield counter_family("mosaic_relay_bytes", "Bytes relayed through circuits, both ways",
                             {(): stats.bytes_relayed})
