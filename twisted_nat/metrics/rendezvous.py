"""
L{RendezvousCollector}: a rendezvous server's counters as Prometheus
metrics, read from its L{ServerStats}, its refusals by reason, and (on
Redis) its node: whether Redis is reachable, the peers it holds, the
offers routed between nodes, and Redis's round-trip time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from twisted_nat.rendezvous.server import RendezvousServerFactory

PREFIX = "twisted_nat_rendezvous_"

_COUNTERS = {
    "registrations": "Names registered (or registered again).",
    "offers_relayed": "Offers relayed and answered, here or through another node.",
    "relays_failed": "Offers relayed that got no answer.",
    "offers_routed": "Offers relayed to a peer held by another node.",
    "offers_from_nodes": "Offers other nodes relayed to peers held here.",
    "moved": "Connections dropped because their key registered at another node since.",
    "refused_connections": "Connections closed at once, over the limits.",
    "closed_idle": "Connections closed for registering no name in time.",
    "closed_oversized": "Connections closed for a box over the limits.",
}


class RendezvousCollector(Collector):
    """What C{factory} has counted, at each scrape."""

    def __init__(self, factory: RendezvousServerFactory) -> None:
        self.factory = factory

    def collect(self) -> Iterator[Metric]:
        directory = self.factory.directory
        stats = attrs.asdict(directory.stats)
        for field, help in _COUNTERS.items():
            yield CounterMetricFamily(PREFIX + field, help, value=stats[field])
        refused = CounterMetricFamily(
            PREFIX + "refused", "Input refused, by reason.", labels=["reason"]
        )
        for reason, count in sorted(directory.drops.counts.items()):
            refused.add_metric([reason], count)
        yield refused
        yield GaugeMetricFamily(
            PREFIX + "peers", "Peers registered here now.", len(directory.by_key)
        )
        yield GaugeMetricFamily(
            PREFIX + "connections", "Connections held now.", len(directory.connections)
        )
        yield GaugeMetricFamily(
            PREFIX + "offers_waiting", "Offers waiting for answers now.", directory.pending.total
        )
        cluster: Any = directory.cluster
        if cluster is not None and hasattr(cluster, "link"):
            yield from self._cluster(cluster)

    def _cluster(self, cluster: Any) -> Iterator[Metric]:
        link = cluster.link
        yield GaugeMetricFamily(
            PREFIX + "redis_up", "Whether this node reaches Redis now (1) or not (0).", link.up
        )
        dropped = CounterMetricFamily(
            PREFIX + "node_messages_refused",
            "Messages from other nodes (Redis) refused, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(cluster.drops.counts.items()):
            dropped.add_metric([reason], count)
        yield dropped
        round_trips = link.round_trips
        yield HistogramMetricFamily(
            PREFIX + "redis_round_trip_seconds",
            "Round-trip time of the Redis commands answered.",
            buckets=round_trips.cumulative(),
            sum_value=round_trips.sum,
        )
