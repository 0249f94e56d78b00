"""
Two services with an IPv4 and an IPv6 socket each, over real sockets on
127.0.0.1 and ::1: the IPv6 path is raced against IPv4 and taken, a peer
without IPv6 connects over IPv4 as before, and the IPv6 public address
comes from our own STUN server on ::1.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from tests.fakes import Collector
from tests.support.polling import until
from twisted_nat.bases import SHARED, SHARED6
from twisted_nat.candidates import CandidateType
from twisted_nat.connection import PeerConnection
from twisted_nat.punch import PunchResult
from twisted_nat.rendezvous import InMemorySignalingHub
from twisted_nat.service import NATTraversalService, PeerEventsBase
from twisted_nat.service.settings import PeerSettings
from twisted_nat.stun.server import BindingServer

reactor: Any = global_reactor


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


pytestmark = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")


def peer(
    hub: InMemorySignalingHub,
    name: str,
    apps: list[Collector],
    ipv6: bool = True,
    stun: list[tuple[str, int]] | None = None,
) -> NATTraversalService:
    def factory(connection: Any) -> Collector:
        app = Collector()
        apps.append(app)
        return app

    return NATTraversalService(
        stun or [],
        reactor=reactor,
        signaling=hub.peer(name),
        protocol_factory=factory,
        settings=PeerSettings(
            interface="127.0.0.1", interface6="::1", ipv6=ipv6, detect_behavior=False
        ),
    )


async def started(*services: NATTraversalService) -> None:
    for service in services:
        service.startService()
    for service in services:
        await service.ready()


async def stopped(*services: NATTraversalService) -> None:
    for service in services:
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_the_ipv6_path_is_taken_and_carries_data() -> None:
    hub = InMemorySignalingHub(reactor=reactor)
    apps: list[Collector] = []
    alice, bob = peer(hub, "alice", []), peer(hub, "bob", apps)
    await started(alice, bob)
    try:
        assert bob.ipv6.local_port is not None
        assert [(c.kind, c.host) for c in bob.candidates] == [
            (CandidateType.HOST, "127.0.0.1"),
            (CandidateType.HOST, "::1"),
        ] or [(c.kind, c.host) for c in bob.candidates] == [
            (CandidateType.HOST, "::1"),
            (CandidateType.HOST, "127.0.0.1"),
        ]
        connection = await alice.connect("bob")
        assert connection.base is SHARED6
        assert connection.remote.address == ("::1", bob.ipv6.local_port)
        connection.write(b"over IPv6")
        await until(lambda: apps and apps[0].received)
        [(data, _)] = apps[0].received
        assert data == b"over IPv6"
        assert bob.connections["alice"].base is SHARED6
        assert bob.status()["local_port6"] == bob.ipv6.local_port
    finally:
        await stopped(alice, bob)
    assert alice.ipv6.port is None and SHARED6 not in alice.bases


@pytest_twisted.ensureDeferred
async def test_a_peer_without_ipv6_connects_over_ipv4() -> None:
    """Its offer has no IPv6 candidate, and an IPv6 one of the other's is never punched."""
    hub = InMemorySignalingHub(reactor=reactor)
    alice, bob = peer(hub, "alice", []), peer(hub, "bob", [], ipv6=False)
    await started(alice, bob)
    try:
        assert bob.ipv6.port is None and SHARED6 not in bob.bases
        assert [c.host for c in bob.candidates] == ["127.0.0.1"]
        connection = await alice.connect("bob")
        assert connection.base is SHARED
        assert connection.remote.address[0] == "127.0.0.1"
        reverse = await bob.connect("alice")
        assert reverse.base is SHARED
    finally:
        await stopped(alice, bob)


@pytest_twisted.ensureDeferred
async def test_ipv6_silent_ipv4_wins() -> None:
    """
    bob's IPv6 socket stops reading, as behind a firewall dropping what
    comes in: IPv4 is taken after the wait for IPv6.
    """
    hub = InMemorySignalingHub(reactor=reactor)
    alice, bob = peer(hub, "alice", []), peer(hub, "bob", [])
    await started(alice, bob)
    try:
        bob_v6: Any = bob.ipv6.port
        bob_v6.stopReading()
        connection = await alice.connect("bob")
        assert connection.base is SHARED
        assert connection.remote.address[0] == "127.0.0.1"
    finally:
        await stopped(alice, bob)


@pytest_twisted.ensureDeferred
async def test_the_ipv6_public_address_comes_from_an_ipv6_stun_server() -> None:
    """With no NAT66 on the way it is the host address itself: offered once, as a host."""
    server = BindingServer()
    server_port = reactor.listenUDP(0, server, interface="::1")
    hub = InMemorySignalingHub(reactor=reactor)
    stun = [("::1", server_port.getHost().port)]
    alice = peer(hub, "alice", [], stun=stun)
    try:
        await started(alice)
        assert alice.stun.stun_servers == [], "the IPv4 socket asks no IPv6 server"
        assert alice.addresses.public is None
        assert alice.addresses.public6 is not None
        assert alice.addresses.public6.mapped == ("::1", alice.ipv6.local_port)
        assert [c.host for c in alice.candidates if c.kind is CandidateType.HOST] == [
            "127.0.0.1",
            "::1",
        ]
        assert alice.status()["public6"] == f"[::1]:{alice.ipv6.local_port}"
    finally:
        await stopped(alice)
        server_port.stopListening()


class Results(PeerEventsBase):
    def __init__(self) -> None:
        self.results: list[PunchResult] = []

    def connected(
        self, connection: PeerConnection, result: PunchResult, offerer: bool, again: bool
    ) -> None:
        self.results.append(result)


@pytest_twisted.ensureDeferred
async def test_an_ipv6_socket_without_an_ipv6_address_punches_no_ipv6() -> None:
    """Without an IPv6 candidate of ours there is no IPv6 route: the peer's are skipped."""
    hub = InMemorySignalingHub(reactor=reactor)
    alice, bob = peer(hub, "alice", []), peer(hub, "bob", [])
    results = Results()
    bob.watch(results)
    await started(alice, bob)
    try:
        assert bob.ipv6.local_port is not None
        bob.addresses.remove(("::1", bob.ipv6.local_port))
        connection = await bob.connect("alice")
        assert connection.base is SHARED
        [result] = results.results
        assert [r.remote.host for r in result.pairs] == ["127.0.0.1"], "no IPv6 pair at all"
    finally:
        await stopped(alice, bob)
