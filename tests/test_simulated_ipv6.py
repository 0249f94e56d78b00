"""
IPv6 on the simulated internet: hosts with global IPv6 addresses behind
stateful firewalls, and services on them, all on one clock.  IPv4 crosses
NATs as before; IPv6 crosses none.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv6Address
from twisted.internet.error import CannotListenError, InvalidAddressError

from tests.fakes import Collector
from twisted_nat import testing as sim
from twisted_nat.bases import SHARED, SHARED6
from twisted_nat.punch import PunchResult, PunchSettings
from twisted_nat.punch.preference import DEFAULT_PREFERENCE
from twisted_nat.rendezvous import InMemorySignalingHub
from twisted_nat.service import NATTraversalService, PeerEventsBase, PeerSettings
from twisted_nat.stun.server import STUNServerGroup

STUN4 = ("203.0.113.10", 3478), ("203.0.113.11", 3479)
STUN6 = ("2001:db8:5::10", 3478), ("2001:db8:5::11", 3479)


class Blocking(sim.Firewall):
    """A firewall that lets no IPv6 in at all."""

    def admits(self, local: Any, remote: Any, now: float) -> bool:
        self.stats.dropped += 1
        return False


# --- hosts and ports ---


def test_the_firewall_drops_the_unsolicited_and_admits_the_answers() -> None:
    internet = sim.SimulatedInternet(seed=1)
    inside = internet.add_host("192.0.2.2", ipv6=["2001:db8:1::2"], firewall=sim.Firewall())
    outside = internet.add_host("192.0.2.3", ipv6=["2001:db8:2::3"])
    ours, theirs = Collector(), Collector()
    inside.listenUDP(4000, ours, "::")
    port = outside.listenUDP(5000, theirs, "::")
    port.write(b"unsolicited", ("2001:db8:1::2", 4000))
    internet.advance(0.1)
    assert ours.received == [] and inside.firewall is not None
    assert inside.firewall.stats.dropped == 1
    ours.transport.write(b"hello", ("2001:db8:2::3", 5000))
    internet.advance(0.1)
    port.write(b"answer", ("2001:db8:1::2", 4000))
    internet.advance(0.1)
    assert theirs.received == [(b"hello", ("2001:db8:1::2", 4000))], "no NAT: the address itself"
    assert ours.received == [(b"answer", ("2001:db8:2::3", 5000))]
    internet.advance(31.0)
    port.write(b"too late", ("2001:db8:1::2", 4000))
    internet.advance(0.1)
    assert len(ours.received) == 1, "the flow expired"


def test_ipv6_ports_are_apart_from_ipv4_ports() -> None:
    internet = sim.SimulatedInternet(seed=1)
    host = internet.add_host("192.0.2.2", ipv6=["2001:db8:1::2"])
    v4 = host.listenUDP(4000, Collector())
    v6 = host.listenUDP(4000, Collector(), "::")
    assert isinstance(v6.getHost(), IPv6Address) and v6.getHost().port == 4000
    with pytest.raises(InvalidAddressError):
        v6.write(b"x", ("192.0.2.9", 1))
    with pytest.raises(InvalidAddressError):
        v4.write(b"x", ("2001:db8::9", 1))
    with pytest.raises(CannotListenError):
        host.listenUDP(4000, Collector(), "::")
    with pytest.raises(CannotListenError):
        internet.add_host("192.0.2.3").listenUDP(0, Collector(), "::")


# --- services ---


class Results(PeerEventsBase):
    def __init__(self) -> None:
        self.results: list[PunchResult] = []

    def connected(self, connection: Any, result: PunchResult, offerer: bool, again: bool) -> None:
        self.results.append(result)


def services(
    kind: str,
    allocation: sim.PortAllocation,
    firewalls: dict[str, sim.Firewall | None],
) -> tuple[sim.SimulatedInternet, dict[str, NATTraversalService], dict[str, list[Collector]]]:
    """alice and bob behind NATs of C{kind}, with IPv6 behind C{firewalls} (absent: no IPv6)."""
    internet = sim.SimulatedInternet(seed=3)
    server = internet.add_host([a for a, _ in STUN4], ipv6=[a for a, _ in STUN6])
    STUNServerGroup(*STUN4).listen(server)
    STUNServerGroup(*STUN6).listen(server)
    hub = InMemorySignalingHub(reactor=internet.clock)
    made: dict[str, NATTraversalService] = {}
    apps: dict[str, list[Collector]] = {}
    for index, name in enumerate(("alice", "bob"), start=1):
        classic: Any = kind
        box = internet.add_nat_of_type(f"198.51.100.{index}", classic, allocation=allocation)
        ipv6 = [f"2001:db8:{index}::2"] if name in firewalls else []
        host = internet.add_host(
            f"192.0.2.{index + 10}", behind=box, ipv6=ipv6, firewall=firewalls.get(name)
        )
        apps[name] = []

        def factory(connection: Any, apps: list[Collector] = apps[name]) -> Collector:
            app = Collector()
            apps.append(app)
            return app

        service = NATTraversalService(
            [STUN4[0], STUN6[0]],
            reactor=host,
            signaling=hub.peer(name, address=box.public_address),
            protocol_factory=factory,
            settings=PeerSettings(
                host_addresses=[host.addresses[0], *ipv6], punch=PunchSettings(timeout=3.0)
            ),
        )
        service.startService()
        made[name] = service
    for service in made.values():
        internet.run_until(service.ready())
    internet.advance(2.0)  # behaviour discovery, both families
    return internet, made, apps


def test_two_random_symmetric_nats_connect_over_ipv6_through_firewalls() -> None:
    """No IPv4 path can work without a relay; IPv6 needs only simultaneous sends."""
    internet, peers, apps = services(
        "symmetric", sim.PortAllocation.RANDOM, {"alice": sim.Firewall(), "bob": sim.Firewall()}
    )
    alice, bob = peers["alice"], peers["bob"]
    assert alice.ipv6.port is not None
    assert alice.addresses.public6 is not None
    assert alice.addresses.public6.mapped == ("2001:db8:1::2", alice.ipv6.local_port)
    assert alice.nat6.behavior is not None
    assert alice.nat6.behavior.nat_type.value == "no NAT, firewalled"
    assert alice.behavior is not None and alice.behavior.nat_type.value == "symmetric"
    connection = internet.run_until(alice.connect("bob"))
    assert connection.base is SHARED6
    assert connection.remote.address == ("2001:db8:2::2", bob.ipv6.local_port)
    connection.write(b"over IPv6")
    internet.advance(0.1)
    assert [data for data, _ in apps["bob"][0].received] == [b"over IPv6"]


def test_ipv6_blocked_ipv4_is_taken_after_the_wait() -> None:
    internet, peers, _ = services(
        "port-restricted-cone",
        sim.PortAllocation.PRESERVING,
        {"alice": sim.Firewall(), "bob": Blocking()},
    )
    results = Results()
    peers["alice"].watch(results)
    connection = internet.run_until(peers["alice"].connect("bob"))
    assert connection.base is SHARED
    [result] = results.results
    assert result.rtt is not None
    # The wait for IPv6 from the first IPv4 pair that worked, and no more
    # than a round trip or two beside it: simulated time is exact.
    wait = DEFAULT_PREFERENCE.wait
    assert wait <= result.elapsed <= wait + 3 * result.rtt


def test_both_open_ipv6_is_taken_without_the_wait() -> None:
    internet, peers, _ = services(
        "port-restricted-cone",
        sim.PortAllocation.PRESERVING,
        {"alice": sim.Firewall(), "bob": sim.Firewall()},
    )
    results = Results()
    peers["alice"].watch(results)
    connection = internet.run_until(peers["alice"].connect("bob"))
    assert connection.base is SHARED6
    [result] = results.results
    assert result.elapsed < DEFAULT_PREFERENCE.wait


def test_a_peer_without_ipv6_connects_over_ipv4_as_before() -> None:
    internet, peers, _ = services(
        "port-restricted-cone", sim.PortAllocation.PRESERVING, {"alice": sim.Firewall()}
    )
    bob = peers["bob"]
    assert bob.ipv6.port is None and SHARED6 not in bob.bases
    results = Results()
    peers["alice"].watch(results)
    connection = internet.run_until(peers["alice"].connect("bob"))
    assert connection.base is SHARED
    [result] = results.results
    assert all(":" not in report.remote.host for report in result.pairs)
    assert result.elapsed < DEFAULT_PREFERENCE.wait, "no wait for an IPv6 nobody offered"
