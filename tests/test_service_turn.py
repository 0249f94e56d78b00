"""
The service with TURN servers, against coturn on loopback: the relayed
candidate, a connection that can only be relayed, and one that could be
relayed but goes direct.

On loopback every direct pair works, so "only a relay can work" is made
by the signaling: a wrapper that takes every candidate but the relayed
ones out of offers and answers, as if the peers' public addresses were
unreachable.  The relay then carries punching, keep-alive and the
application's data, through coturn, over UDP and over TCP.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from tests.fakes import Collector
from tests.support.coturn import (
    PRIMARY_HOST,
    CoturnInstance,
    CoturnMode,
    require_tool,
    running_coturn,
)
from tests.support.polling import until
from twisted_nat.bases import SHARED
from twisted_nat.candidates import CandidateType
from twisted_nat.metrics.peer import PeerCollector, PeerMetrics
from twisted_nat.punch import PunchSettings
from twisted_nat.rendezvous import InMemorySignalingHub
from twisted_nat.service import KeepAliveSettings, NATTraversalService, PeerSettings
from twisted_nat.turn import TURNServer

pytestmark = pytest.mark.interop

reactor: Any = global_reactor

USER, PASSWORD, REALM = "relay-user", "relay-password", "relay.test"


@pytest.fixture(scope="module")
def coturn() -> Iterator[CoturnInstance]:
    require_tool("turnserver")
    with running_coturn(
        CoturnMode.TURN, username=USER, password=PASSWORD, realm=REALM, tcp=True
    ) as server:
        yield server


def turn_server(coturn: CoturnInstance, transport: str) -> TURNServer:
    return TURNServer(coturn.host, coturn.port, transport, False, USER, PASSWORD)


async def start_pair(
    coturn: CoturnInstance, transport: str, relay_only: bool
) -> tuple[dict[str, NATTraversalService], dict[str, list[Collector]]]:
    hub = InMemorySignalingHub(reactor=reactor)
    services: dict[str, NATTraversalService] = {}
    apps: dict[str, list[Collector]] = {"alice": [], "bob": []}
    for name in ("alice", "bob"):
        signaling: Any = hub.peer(name)

        def factory(connection: Any, name: str = name) -> Collector:
            app = Collector()
            apps[name].append(app)
            return app

        service = NATTraversalService(
            [coturn.address],
            reactor=reactor,
            name=name,
            signaling=signaling,
            protocol_factory=factory,
            settings=PeerSettings(
                interface=PRIMARY_HOST,
                detect_behavior=False,
                relay_only=relay_only,
                turn_servers=[turn_server(coturn, transport)],
                keepalive=KeepAliveSettings(interval=0.5, timeout=0.4),
                punch=PunchSettings(timeout=3.0),
            ),
        )
        service.startService()
        services[name] = service
    for service in services.values():
        await service.ready()
    return services, apps


def relayed_bytes(metrics: PeerMetrics) -> dict[str, float]:
    """The relayed bytes metric of a peer, by direction."""
    return {
        sample.labels["direction"]: sample.value
        for family in PeerCollector(metrics).collect()
        for sample in family.samples
        if sample.name == "twisted_nat_peer_relayed_bytes_total"
    }


async def stop(services: dict[str, NATTraversalService]) -> None:
    for service in services.values():
        await service.stopService()


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_a_peer_reachable_only_through_the_relay_is_reached(
    coturn: CoturnInstance, transport: str
) -> None:
    services, apps = await start_pair(coturn, transport, relay_only=True)
    try:
        alice, bob = services["alice"], services["bob"]
        for service in services.values():
            [relayed] = [c for c in service.candidates if c.kind is CandidateType.RELAYED]
            assert relayed.host == PRIMARY_HOST and relayed.port != coturn.port
            assert service.status()["relays"] == [f"{relayed.host}:{relayed.port}"]
        metrics = PeerMetrics(alice)
        connection = await alice.connect("bob")
        assert connection.relayed
        assert connection.remote.kind in (CandidateType.RELAYED, CandidateType.PEER_REFLEXIVE)
        await until(lambda: "alice" in bob.connections)
        assert bob.connections["alice"].relayed
        connection.write(b"through the relay")
        await until(lambda: bool(apps["bob"]) and bool(apps["bob"][0].received))
        assert apps["bob"][0].received[0][0] == b"through the relay"
        bob.connections["alice"].write(b"and back")
        await until(lambda: bool(apps["alice"][0].received))
        assert apps["alice"][0].received[0][0] == b"and back"
        # Each frame: 1 type byte, an 8-byte sequence number, the payload, a 16-byte tag.
        counted = relayed_bytes(metrics)
        assert counted["sent"] == 25 + len(b"through the relay")
        assert counted["received"] == 25 + len(b"and back")
        assert alice.router.stats.relayed_bytes_sent == counted["sent"]
        assert bob.router.stats.relayed_bytes_received == counted["sent"]
        # Keep-alive runs over the relay too, and measures it.
        await until(lambda: getattr(connection.quality(), "rtt", None) is not None)
        status = alice.status()["connections"][0]
        assert status["relayed"] is True and status["peer"] == "bob"
    finally:
        await stop(services)


@pytest_twisted.ensureDeferred
async def test_a_relay_is_offered_but_the_direct_path_is_taken(coturn: CoturnInstance) -> None:
    services, apps = await start_pair(coturn, "udp", relay_only=False)
    try:
        alice, bob = services["alice"], services["bob"]
        assert any(c.kind is CandidateType.RELAYED for c in alice.candidates)
        connection = await alice.connect("bob")
        await until(lambda: "alice" in bob.connections)
        assert not connection.relayed and connection.base is SHARED
        assert not bob.connections["alice"].relayed
        connection.write(b"direct")
        await until(lambda: bool(apps["bob"]) and bool(apps["bob"][0].received))
        assert relayed_bytes(PeerMetrics(alice)) == {"sent": 0, "received": 0}
    finally:
        await stop(services)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest_twisted.ensureDeferred
async def test_a_wrong_turn_password_costs_a_warning_not_the_service(
    coturn: CoturnInstance, transport: str
) -> None:
    wrong = TURNServer(coturn.host, coturn.port, transport, False, USER, "not-the-password")
    service = NATTraversalService(
        [coturn.address],
        reactor=reactor,
        settings=PeerSettings(interface=PRIMARY_HOST, detect_behavior=False, turn_servers=[wrong]),
    )
    service.startService()
    try:
        await service.ready()
        assert service.relays.allocations == {}
        assert not any(c.kind is CandidateType.RELAYED for c in service.candidates)
        assert service.public is not None, "STUN on the same socket still worked"
        assert service.relays.streams == [], "a refused stream is closed, not kept"
        assert service.relays.retrying, "and the relay is asked for again later"
    finally:
        await service.stopService()
