"""
Prometheus metrics: the rendezvous server's, scraped over real HTTP on
loopback after real traffic, and a peer's, on the simulated internet.  The
values are what the server and the service count, and every label value
comes from a small fixed set.
"""

from __future__ import annotations

import urllib.request
from typing import Any, cast

import pytest
import pytest_twisted
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, endpoints
from twisted.internet import reactor as global_reactor
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread

from tests.support.world import World, build_world
from tests.test_rendezvous import (  # noqa: F401
    KEYS,
    answering,
    client_endpoint,
    offer_from,
    peers,
)
from twisted_nat import testing as sim
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.errors import DuplicateName, UnknownPeer
from twisted_nat.metrics.exposition import MetricsSite
from twisted_nat.metrics.peer import PeerCollector, PeerMetrics
from twisted_nat.metrics.rendezvous import RendezvousCollector
from twisted_nat.punch import PunchResult

reactor: Any = global_reactor
Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


async def scrape(registry: CollectorRegistry) -> Samples:
    """What a Prometheus server would read, over HTTP from a L{MetricsSite} on loopback."""
    endpoint = endpoints.serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    port = await endpoint.listen(MetricsSite(registry))
    url = f"http://127.0.0.1:{port.getHost().port}/"

    def get() -> tuple[str, str]:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.headers["content-type"], response.read().decode()

    try:
        content_type, text = await deferToThread(get)
    finally:
        await defer.maybeDeferred(port.stopListening)
    assert content_type.startswith("text/plain")
    values: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return values


@pytest_twisted.ensureDeferred
async def test_the_server_counts_what_it_did_and_refused(peers):  # noqa: F811
    server = peers.server()
    endpoint = client_endpoint(server)
    alice, bob = peers.client(endpoint, "alice"), peers.client(endpoint, "bob")
    bob.set_offer_handler(answering())
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    await alice.connect(offer_from())
    with pytest.raises(UnknownPeer):
        await alice.connect(offer_from(to="carol"))
    mallory = peers.client(endpoint, "bob", identity=KEYS["mallory"])
    with pytest.raises(DuplicateName):
        await mallory.when_registered()
    await mallory.close()

    registry = CollectorRegistry()
    registry.register(RendezvousCollector(server.factory))
    values = await scrape(registry)
    prefix = "twisted_nat_rendezvous_"
    assert values[prefix + "registrations_total"][()] == 2
    assert values[prefix + "offers_relayed_total"][()] == 1
    assert values[prefix + "peers"][()] == 2
    assert values[prefix + "offers_routed_total"][()] == 0
    assert prefix + "redis_up" not in values  # a server on its own
    refused = values[prefix + "refused_total"]
    assert refused[(("reason", "name taken"),)] >= 1
    assert all(len(labels) == 1 and labels[0][0] == "reason" for labels in refused)


def test_a_peer_counts_punches_by_nat_types_and_path_and_paths_lost():
    """On the simulated internet: both NATs discovered, so both hints name them."""
    w = build_world(
        {
            "alice": ("port-restricted-cone", sim.PortAllocation.RANDOM),
            "bob": ("restricted-cone", sim.PortAllocation.PRESERVING),
        },
        World,
        nat={"binding_timeout": 30.0},
        keepalive_interval=4.0,
        keepalive_timeout=1.0,
    )
    alice = w.services["alice"]
    metrics = PeerMetrics(alice, w.internet.clock)
    connection = w.internet.run_until(alice.connect("bob"))
    assert connection.peer_nat == "restricted cone"
    # alice's NAT forgets its mappings: keep-alive loses the path, a new punch rebinds it.
    w.internet.advance(5.0)
    w.nats["alice"].flush()
    w.internet.advance(12.0)
    values = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in PeerCollector(metrics).collect()
        for sample in family.samples
    }
    w.stop()
    connected = [
        (labels, count)
        for (name, labels), count in values.items()
        if name == "twisted_nat_peer_punches_total"
    ]
    assert sum(count for _, count in connected) == 2  # the first punch, and the one after the loss
    for labels, _ in connected:
        assert dict(labels)["our_nat"] == "port-restricted cone"
        assert dict(labels)["their_nat"] == "restricted cone"
        assert dict(labels)["outcome"] == "connected"
    assert values[("twisted_nat_peer_paths_lost_total", ())] == 1
    assert values[("twisted_nat_peer_path_changes_total", ())] >= 1
    assert values[("twisted_nat_peer_punch_seconds_count", (("path", "direct"),))] == 2
    assert values[("twisted_nat_peer_direct_path_seconds_count", ())] == 2
    assert values[("twisted_nat_peer_connections", ())] == 1


class FakeService:
    """What L{PeerMetrics} asks of a service, for driving it by hand."""

    behavior = None

    def watch(self, watcher: object) -> None:
        pass


class FakeConnection:
    """A connection whose path the test changes, as a move or a new punch would."""

    peer_nat = None

    def __init__(self) -> None:
        self.relayed = True
        self.session_id = b"first"
        self.listeners: list[Any] = []

    def on_path_change(self, listener: Any) -> None:
        self.listeners.append(listener)

    def path_changed(self, relayed: bool, session_id: bytes) -> None:
        self.relayed, self.session_id = relayed, session_id
        for listener in self.listeners:
            listener(self)


def punched(elapsed: float, relayed: bool) -> PunchResult:
    candidate = Candidate(CandidateType.RELAYED if relayed else CandidateType.HOST, "192.0.2.1", 1)
    return PunchResult(candidate, None, None, elapsed, (), relayed=relayed)


def test_the_time_to_a_direct_path_counts_a_move_off_the_relay_once():
    clock = Clock()
    clock.advance(100.0)
    metrics = PeerMetrics(cast(Any, FakeService()), clock)
    connection: Any = FakeConnection()
    # Relayed after 0.3 s of punching; the same session moves to a direct path 1.2 s later.
    metrics.connected(connection, punched(0.3, relayed=True), True, False)
    assert metrics.to_direct.count == 0
    clock.advance(1.2)
    connection.path_changed(relayed=False, session_id=b"first")
    assert metrics.to_direct.count == 1 and metrics.to_direct.sum == pytest.approx(1.5)
    # Lost and punched again, on the relay, then a new punch (a new session) goes direct:
    # the move is not counted, only the punch that connected, at its own time.
    clock.advance(60.0)
    connection.path_changed(relayed=True, session_id=b"second")
    metrics.connected(connection, punched(0.2, relayed=True), True, True)
    clock.advance(30.0)
    connection.path_changed(relayed=False, session_id=b"third")
    metrics.connected(connection, punched(0.4, relayed=False), True, True)
    assert metrics.to_direct.count == 2 and metrics.to_direct.sum == pytest.approx(1.9)
    assert metrics.path_changes == 3
    assert len(connection.listeners) == 1
