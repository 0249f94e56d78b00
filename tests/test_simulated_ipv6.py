"""
IPv6 on the simulated internet: hosts with global IPv6 addresses behind
stateful firewalls or with IPv6 addresses behind a NAT66, and services on
them, all on one clock.  Each family crosses NATs of its own.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv6Address
from twisted.internet.error import CannotListenError, InvalidAddressError

from tests.fakes import Collector
from twisted_nat import testing as sim
from twisted_nat.bases import SHARED, SHARED6
from twisted_nat.candidates import CandidateType
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


def test_a_nat66_maps_and_filters_as_an_ipv4_nat_of_its_kind() -> None:
    internet = sim.SimulatedInternet(seed=1)
    nat66 = internet.add_nat_of_type("2001:db8:7::1", "port-restricted-cone")
    inside = internet.add_host("192.0.2.2", ipv6=["fd00::2"], behind6=nat66)
    outside = internet.add_host("192.0.2.3", ipv6=["2001:db8:2::3"])
    ours, theirs = Collector(), Collector()
    inside.listenUDP(4000, ours, "::")
    port = outside.listenUDP(5000, theirs, "::")
    other_port = outside.listenUDP(5001, Collector(), "::")
    port.write(b"unsolicited", ("2001:db8:7::1", 4000))
    internet.advance(0.1)
    assert ours.received == [] and nat66.stats.dropped == 1, "no mapping yet"
    ours.transport.write(b"hello", ("2001:db8:2::3", 5000))
    internet.advance(0.1)
    assert theirs.received == [(b"hello", ("2001:db8:7::1", 4000))], "mapped, port preserved"
    port.write(b"answer", ("2001:db8:7::1", 4000))
    other_port.write(b"another port", ("2001:db8:7::1", 4000))
    internet.advance(0.1)
    assert ours.received == [(b"answer", ("2001:db8:2::3", 5000))]
    assert nat66.stats.filtered == 1, "port-restricted: the endpoint contacted only"
    [mapping] = nat66.mappings()
    assert (mapping.internal, mapping.external) == (("fd00::2", 4000), ("2001:db8:7::1", 4000))
    assert nat66.flush() == 1


def test_a_symmetric_nat66_maps_each_destination_apart_and_leaves_ipv4_alone() -> None:
    internet = sim.SimulatedInternet(seed=1)
    nat66 = internet.add_nat_of_type(
        "2001:db8:7::1", "symmetric", allocation=sim.PortAllocation.SEQUENTIAL
    )
    elsewhere = internet.add_nat_of_type("2001:db8:8::1", "full-cone")
    inside = internet.add_host("192.0.2.2", ipv6=["fd00::2"], behind6=nat66)
    internet.add_host("192.0.2.4", ipv6=["fd00::2"], behind6=elsewhere)  # another home's
    outside = internet.add_host("192.0.2.3", ipv6=["2001:db8:2::3"])
    theirs = [Collector(), Collector(), Collector()]
    outside.listenUDP(5000, theirs[0], "::")
    outside.listenUDP(5001, theirs[1], "::")
    outside.listenUDP(5000, theirs[2])
    port6 = inside.listenUDP(4000, Collector(), "::")
    port6.write(b"one", ("2001:db8:2::3", 5000))
    port6.write(b"two", ("2001:db8:2::3", 5001))
    inside.listenUDP(4000, Collector()).write(b"four", ("192.0.2.3", 5000))
    internet.advance(0.1)
    assert sorted(source for app in theirs for _, source in app.received) == [
        ("192.0.2.2", 4000),
        ("2001:db8:7::1", 1024),
        ("2001:db8:7::1", 1025),
    ], "a mapping per destination for IPv6, none for IPv4"
    assert len(nat66.mappings()) == 2 and elsewhere.mappings() == []


def test_each_family_goes_behind_nats_of_its_own() -> None:
    internet = sim.SimulatedInternet()
    nat44 = internet.add_nat_of_type("198.51.100.1", "full-cone")
    nat66 = internet.add_nat_of_type("2001:db8:7:0::1", "full-cone")
    assert nat66.ipv6 and not nat44.ipv6
    assert nat66.public_address == "2001:db8:7::1", "written as it is seen"
    with pytest.raises(ValueError, match="NAT66"):
        internet.add_host("10.0.0.2", ipv6=["fd00::2"], behind6=nat44)
    with pytest.raises(ValueError, match="IPv4 NAT"):
        internet.add_host("10.0.0.2", behind=nat66)
    with pytest.raises(ValueError, match="NAT66"):
        internet.add_nat_of_type("2001:db8:9::1", "full-cone", behind=nat44)
    with pytest.raises(ValueError, match="already in use"):
        internet.add_host("192.0.2.9", ipv6=["2001:db8:7::1"])


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
    nat66: dict[str, sim.ClassicNATType] | None = None,
) -> tuple[sim.SimulatedInternet, dict[str, NATTraversalService], dict[str, list[Collector]]]:
    """
    alice and bob behind NATs of C{kind}, with IPv6 behind C{firewalls}
    (absent: no IPv6): global, or fd00::2 behind a NAT66 of the kind
    C{nat66} names, whose outside address is 2001:db8:1::1 for alice.
    """
    nat66 = nat66 or {}
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
        box6 = None
        if name in nat66:
            box6 = internet.add_nat_of_type(f"2001:db8:{index}::1", nat66[name])
            ipv6 = ["fd00::2"]
        host = internet.add_host(
            f"192.0.2.{index + 10}",
            behind=box,
            ipv6=ipv6,
            firewall=firewalls.get(name),
            behind6=box6,
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


@pytest.mark.parametrize(
    ("kind", "nat_type"),
    [
        ("full-cone", "full cone"),
        ("restricted-cone", "restricted cone"),
        ("port-restricted-cone", "port-restricted cone"),
        ("symmetric", "symmetric"),
    ],
)
def test_behaviour_discovery_over_ipv6_reports_the_nat66(
    kind: sim.ClassicNATType, nat_type: str
) -> None:
    """Beside it, bob's firewalled global address is still no NAT at all."""
    _, peers, _ = services(
        "port-restricted-cone",
        sim.PortAllocation.PRESERVING,
        {"alice": None, "bob": sim.Firewall()},
        nat66={"alice": kind},
    )
    alice = peers["alice"].status()["nat6"]
    assert alice is not None, "discovery over IPv6 ended"
    assert (alice["nat_type"], alice["nat_present"]) == (nat_type, True), alice
    assert alice["public"].startswith("[2001:db8:1::1]:") and alice["local"].startswith(
        "[fd00::2]:"
    )
    bob = peers["bob"].status()["nat6"]
    assert bob is not None and (bob["nat_type"], bob["nat_present"]) == (
        "no NAT, firewalled",
        False,
    )
    assert bob["public"] == bob["local"]
    assert peers["alice"].status()["nat"]["nat_type"] == "port-restricted cone", "IPv4's own"


@pytest.mark.parametrize("offerer", ["alice", "bob"])
@pytest.mark.parametrize("firewalled", [False, True], ids=["nat66", "nat66+firewall"])
def test_a_peer_behind_nat66_connects_over_ipv6_by_its_server_reflexive_address(
    offerer: str, firewalled: bool
) -> None:
    """
    alice's IPv6 is behind a NAT66 (and a stateful firewall too, as the
    lab's router is both), bob's behind a firewall, and no IPv4 path can
    work without a relay (random symmetric NATs): alice offers what the
    IPv6 STUN server saw, and simultaneous sends open both.
    """
    firewall = sim.Firewall() if firewalled else None
    internet, peers, apps = services(
        "symmetric",
        sim.PortAllocation.RANDOM,
        {"alice": firewall, "bob": sim.Firewall()},
        nat66={"alice": "port-restricted-cone"},
    )
    alice = peers["alice"]
    assert alice.addresses.public6 is not None
    assert alice.addresses.public6.mapped == ("2001:db8:1::1", alice.ipv6.local_port)
    srflx6 = [
        c.address
        for c in alice.candidates
        if c.kind is CandidateType.SERVER_REFLEXIVE and ":" in c.host
    ]
    assert srflx6 == [alice.addresses.public6.mapped]
    answerer = "bob" if offerer == "alice" else "alice"
    connection = internet.run_until(peers[offerer].connect(answerer))
    assert connection.base is SHARED6
    connection.write(b"over IPv6")
    internet.advance(0.1)
    [(data, _)] = apps[answerer][0].received
    assert data == b"over IPv6"
    if offerer == "bob":
        assert connection.remote.address == alice.addresses.public6.mapped, "the NAT66's side"
    if firewall is not None:
        assert firewall.stats.admitted > 0, "behind the NAT66, the firewall judged what came in"
