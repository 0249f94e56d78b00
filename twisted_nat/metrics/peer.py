"""
A peer's metrics: L{PeerMetrics} watches the service's events
(L{twisted_nat.service.events.IPeerEvents}) and counts them by labels from
fixed sets (NAT types, path kinds, outcomes, refusal reasons, directions:
never names, keys or addresses); L{PeerCollector} exports them with what
the service counts itself (connections, relayed bytes, refused offers).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import cast
from weakref import WeakKeyDictionary

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_nat.connection import PeerConnection
from twisted_nat.punch import PunchResult
from twisted_nat.service.events import IPeerEvents, PeerEventsBase
from twisted_nat.service.service import NATTraversalService
from twisted_nat.timing import SETUP_BUCKETS, Latencies

PREFIX = "twisted_nat_peer_"
UNKNOWN = "unknown"


@implementer(IPeerEvents)
class PeerMetrics(PeerEventsBase):
    """
    What happened to C{service}'s punches and paths.

    @ivar punches: punches by (our NAT, their NAT, path, outcome); the path
        is the kind of the peer's candidate in use (C{host}, C{srflx},
        C{prflx}), C{relayed}, or C{none} for a punch that failed.
    @ivar setup: seconds from the start of a punch to its path, by
        C{direct} or C{relayed}.
    @ivar to_direct: seconds from the start of a punch to its connection's
        first direct path: the punch's own, or a move off the relay it
        connected on first.
    @ivar path_changes: paths that changed under a connection (a move from
        a relay to a direct path, a new punch after a loss).
    @ivar paths_lost: paths keep-alive gave up on.
    @param clock: times the moves off a relay; the global reactor if not
        given.
    """

    def __init__(self, service: NATTraversalService, clock: IReactorTime | None = None) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self.service = service
        self.clock = clock
        self.punches: Counter[tuple[str, str, str, str]] = Counter()
        self.setup = {kind: Latencies(SETUP_BUCKETS) for kind in ("direct", "relayed")}
        self.to_direct = Latencies(SETUP_BUCKETS)
        self.path_changes = 0
        self.paths_lost = 0
        # A relayed connection's session and when its punch started, until it moves off.
        self._on_relay: WeakKeyDictionary[PeerConnection, tuple[bytes, float]] = WeakKeyDictionary()
        service.watch(self)

    def _ours(self) -> str:
        behavior = self.service.behavior
        return behavior.nat_type.value if behavior is not None else UNKNOWN

    def connected(
        self, connection: PeerConnection, result: PunchResult, offerer: bool, again: bool
    ) -> None:
        path = "relayed" if result.relayed else result.remote.kind.value
        theirs = connection.peer_nat or UNKNOWN
        self.punches[(self._ours(), theirs, path, "connected")] += 1
        self.setup["relayed" if result.relayed else "direct"].record(result.elapsed)
        if result.relayed:
            started = self.clock.seconds() - result.elapsed
            self._on_relay[connection] = (connection.session_id, started)
        else:
            self._on_relay.pop(connection, None)
            self.to_direct.record(result.elapsed)
        if not again:
            connection.on_path_change(self._path_changed)

    def _path_changed(self, connection: PeerConnection) -> None:
        self.path_changes += 1
        session, started = self._on_relay.get(connection, (b"", 0.0))
        # A move keeps the session; a new punch after a loss (a new session) is counted
        # when it connects.
        if session == connection.session_id and not connection.relayed:
            del self._on_relay[connection]
            self.to_direct.record(self.clock.seconds() - started)

    def path_lost(self, connection: PeerConnection, reason: Failure) -> None:
        self.paths_lost += 1

    def punch_failed(self, peer: str, offerer: bool, reason: Failure) -> None:
        self.punches[(self._ours(), UNKNOWN, "none", "failed")] += 1


class PeerCollector(Collector):
    """C{metrics} and what its service counts itself, at each scrape."""

    def __init__(self, metrics: PeerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics, service = self.metrics, self.metrics.service
        punches = CounterMetricFamily(
            PREFIX + "punches",
            "Punches by our NAT type, the peer's (as its hint said), path kind and outcome.",
            labels=["our_nat", "their_nat", "path", "outcome"],
        )
        for labels, count in sorted(metrics.punches.items()):
            punches.add_metric(list(labels), count)
        yield punches
        setup = HistogramMetricFamily(
            PREFIX + "punch_seconds",
            "Seconds from the start of a punch to its path, direct or relayed.",
            labels=["path"],
        )
        for kind, latencies in metrics.setup.items():
            setup.add_metric([kind], latencies.cumulative(), latencies.sum)
        yield setup
        to_direct = HistogramMetricFamily(
            PREFIX + "direct_path_seconds",
            "Seconds from the start of a punch to the connection's first direct path "
            "(the punch's own, or a move off a relay).",
        )
        to_direct.add_metric([], metrics.to_direct.cumulative(), metrics.to_direct.sum)
        yield to_direct
        yield CounterMetricFamily(
            PREFIX + "path_changes", "Paths changed under a connection.", value=metrics.path_changes
        )
        yield CounterMetricFamily(
            PREFIX + "paths_lost", "Paths keep-alive gave up on.", value=metrics.paths_lost
        )
        relayed = CounterMetricFamily(
            PREFIX + "relayed_bytes",
            "Bytes of connection frames that went over relayed paths (TURN framing aside).",
            labels=["direction"],
        )
        stats = service.router.stats
        relayed.add_metric(["sent"], stats.relayed_bytes_sent)
        relayed.add_metric(["received"], stats.relayed_bytes_received)
        yield relayed
        yield GaugeMetricFamily(
            PREFIX + "connections", "Connections to peers now.", len(service.connections)
        )
        limited = CounterMetricFamily(
            PREFIX + "offers_limited",
            "Offers refused or techniques skipped by the limits, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(service.punching.refused.counts.items()):
            limited.add_metric([reason], count)
        yield limited
