"""Prometheus metrics of one node, served as text at ``GET /metrics``.

Each node owns its own :class:`prometheus_client.CollectorRegistry` (never the
process-wide default): tests run several nodes in one process, and their
numbers must not mix.  Two kinds of metrics live here:

* event metrics, moved by one-line calls at the sites where the event happens
  (a query starts or ends, its first token arrives, an expert fails over);
* state read at scrape time through :meth:`NodeMetrics.add_source` (peers in
  the registry, records rejected by reason, bytes served and fetched, queue
  depth, busy rejections; see node/api/node_metrics.py), so the code that owns
  the state keeps a plain counter and never imports Prometheus.

Each :class:`node.app.Node` owns one (``node.metrics``) and hands it to whoever records
or serves its numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Seconds: a local 135M expert's first token is ~0.1-1 s on CPU; a fan-out over slow peers can take a minute.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, float("inf"))

Source = Callable[[], Iterable[Metric]]


class _StateCollector(Collector):
    """Yields whatever the registered sources report at scrape time."""

    def __init__(self) -> None:
        self.sources: dict[str, Source] = {}

    def collect(self) -> Iterable[Metric]:
        for source in list(self.sources.values()):
            yield from source()

    def describe(self) -> Iterable[Metric]:
        return ()  # families depend on live state; nothing to check at registration


class NodeMetrics:
    """The metric objects of one node, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mosaic_requests", "Queries received, by protocol (http, libp2p) and strategy",
                                ["protocol", "strategy"], registry=r)
        self.errors = Counter("mosaic_request_errors", "Queries that ended in an error, by protocol, strategy and code",
                              ["protocol", "strategy", "code"], registry=r)
        self.tokens = Counter("mosaic_tokens", "Tokens of answered queries, by kind (prompt, completion)",
                              ["kind"], registry=r)
        self.in_flight = Gauge("mosaic_queries_in_flight", "Queries this node is coordinating now", registry=r)
        self.first_token = Histogram("mosaic_time_to_first_token_seconds",
                                     "From receiving a query to its first answer token", ["strategy"],
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("mosaic_query_seconds", "From receiving a query to its complete answer",
                                 ["strategy"], buckets=_LATENCY_BUCKETS, registry=r)
        self.failovers = Counter("mosaic_failovers", "Expert attempts abandoned for the next expert, by error code",
                                 ["code"], registry=r)
        self._state = _StateCollector()
        r.register(self._state)

    def add_source(self, name: str, source: Source) -> None:
        """Read live state at every scrape (``source`` returns metric families); a second
        source of the same ``name`` replaces the first (a restarted service re-binds)."""
        self._state.sources[name] = source

    def render(self) -> bytes:
        """The Prometheus text exposition of everything above."""
        return generate_latest(self.registry)


def counter_family(name: str, documentation: str, values: dict[tuple[str, ...], float],
                   labels: tuple[str, ...] = ()) -> CounterMetricFamily:
    """A counter family from ``{label values: total}`` (for state that already counts)."""
    family = CounterMetricFamily(name, documentation, labels=list(labels))
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family


def gauge_family(name: str, documentation: str, values: dict[tuple[str, ...], float],
                 labels: tuple[str, ...] = ()) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels))
    for key, value in values.items():
        family.add_metric(list(key), value)
    return family
