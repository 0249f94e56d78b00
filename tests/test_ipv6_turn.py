"""
TURN allocations per family, against coturn listening and relaying on
127.0.0.1 and ::1: a peer with an IPv6 socket asks for an IPv6 relayed
address (REQUESTED-ADDRESS-FAMILY) besides its IPv4 one, each relay a base
of its own family, and two peers reach each other through the relays alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from tests.fakes import Collector
from tests.support.coturn import CoturnInstance, CoturnMode, require_tool, running_coturn
from tests.support.polling import until
from tests.test_ipv6_loopback import _has_ipv6_loopback
from twisted_nat.candidates import CandidateType
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.punch import PunchSettings
from twisted_nat.rendezvous import InMemorySignalingHub
from twisted_nat.service import NATTraversalService, PeerSettings
from twisted_nat.stun.client import STUNClient
from twisted_nat.turn import TURNServer

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here"),
]

reactor: Any = global_reactor

USER, PASSWORD, REALM = "relay-user", "relay-password", "relay.test"


@pytest.fixture(scope="module")
def coturn() -> Iterator[CoturnInstance]:
    require_tool("turnserver")
    with running_coturn(
        CoturnMode.TURN,
        username=USER,
        password=PASSWORD,
        realm=REALM,
        tcp=True,
        extra_args=["--listening-ip", "::1", "--relay-ip", "::1"],
    ) as server:
        yield server


def peer(
    hub: InMemorySignalingHub, name: str, servers: list[TURNServer], apps: list[Collector]
) -> NATTraversalService:
    def factory(connection: Any) -> Collector:
        app = Collector()
        apps.append(app)
        return app

    return NATTraversalService(
        reactor=reactor,
        signaling=hub.peer(name),
        protocol_factory=factory,
        settings=PeerSettings(
            interface="127.0.0.1",
            interface6="::1",
            detect_behavior=False,
            relay_only=True,
            turn_servers=servers,
            punch=PunchSettings(timeout=3.0),
        ),
    )


def relays_of(service: NATTraversalService) -> tuple[set[int], set[str]]:
    """The families of its relay bases, and the hosts of its relayed candidates."""
    families = {base.family for base in service.relays.allocations}
    hosts = {c.host for c in service.candidates if c.kind is CandidateType.RELAYED}
    return families, hosts


@pytest_twisted.ensureDeferred
async def test_a_relay_per_family_over_udp_and_a_relayed_connection(
    coturn: CoturnInstance,
) -> None:
    servers = [
        TURNServer("127.0.0.1", coturn.port, "udp", False, USER, PASSWORD),
        TURNServer("::1", coturn.port, "udp", False, USER, PASSWORD),
    ]
    hub = InMemorySignalingHub(reactor=reactor)
    apps: list[Collector] = []
    alice, bob = peer(hub, "alice", servers, []), peer(hub, "bob", servers, apps)
    for service in (alice, bob):
        service.startService()
    try:
        for service in (alice, bob):
            await service.ready()
            assert relays_of(service) == ({4, 6}, {"127.0.0.1", "::1"})
        connection = await alice.connect("bob")
        assert connection.relayed
        connection.write(b"through a relay")
        await until(lambda: bool(apps) and bool(apps[0].received))
        assert apps[0].received[0][0] == b"through a relay"
    finally:
        for service in (alice, bob):
            await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_server_by_name_over_tcp_gives_both_families(coturn: CoturnInstance) -> None:
    servers = [TURNServer("localhost", coturn.port, "tcp", False, USER, PASSWORD)]
    hub = InMemorySignalingHub(reactor=reactor)
    alice = peer(hub, "alice", servers, [])
    alice.startService()
    try:
        await alice.ready()
        assert alice.relays.families(servers[0]) == [4, 6]
        assert relays_of(alice) == ({4, 6}, {"127.0.0.1", "::1"})
    finally:
        await alice.stopService()


def test_which_families_a_server_is_asked_for() -> None:
    hub = InMemorySignalingHub()
    service = peer(hub, "carol", [], [])
    v4, v6, named = (
        TURNServer(host, 3478, "udp", False, USER, PASSWORD)
        for host in ("192.0.2.1", "2001:db8::1", "turn.test")
    )
    relays = service.relays
    assert [relays.families(s) for s in (v4, v6, named)] == [[4], [], [4]], "no IPv6 socket"
    relays.attach6(UDPMultiplexer(), STUNClient())
    assert [relays.families(s) for s in (v4, v6, named)] == [[4], [6], [4, 6]]
