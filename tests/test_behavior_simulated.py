"""
Behaviour discovery on the simulated internet: every kind of NAT, with and
without loss, in milliseconds of real time.
"""

from __future__ import annotations

import statistics

import pytest

from twisted_nat import testing as sim
from twisted_nat.nat import (
    FilteringBehavior,
    MappingBehavior,
    NATType,
    detect_nat,
    measure_binding_lifetime,
)
from twisted_nat.stun.server import STUNServerGroup

PRIMARY = ("203.0.113.10", 3478)
ALTERNATE = ("203.0.113.11", 3479)
NAT_ADDRESS = "198.51.100.1"

S = sim.MappingBehavior
F = sim.FilteringBehavior

# (how the simulated NAT is built) -> (what discovery must report)
CASES = {
    "no NAT": (None, NATType.OPEN_INTERNET, MappingBehavior.ENDPOINT_INDEPENDENT),
    "full cone": (
        (S.ENDPOINT_INDEPENDENT, F.ENDPOINT_INDEPENDENT, sim.PortAllocation.PRESERVING),
        NATType.FULL_CONE,
        MappingBehavior.ENDPOINT_INDEPENDENT,
    ),
    "restricted cone": (
        (S.ENDPOINT_INDEPENDENT, F.ADDRESS_DEPENDENT, sim.PortAllocation.PRESERVING),
        NATType.RESTRICTED_CONE,
        MappingBehavior.ENDPOINT_INDEPENDENT,
    ),
    "port-restricted cone": (
        (S.ENDPOINT_INDEPENDENT, F.ADDRESS_AND_PORT_DEPENDENT, sim.PortAllocation.PRESERVING),
        NATType.PORT_RESTRICTED_CONE,
        MappingBehavior.ENDPOINT_INDEPENDENT,
    ),
    "symmetric, random ports": (
        (S.ADDRESS_AND_PORT_DEPENDENT, F.ADDRESS_AND_PORT_DEPENDENT, sim.PortAllocation.RANDOM),
        NATType.SYMMETRIC,
        MappingBehavior.ADDRESS_AND_PORT_DEPENDENT,
    ),
    "symmetric, sequential ports": (
        (S.ADDRESS_AND_PORT_DEPENDENT, F.ADDRESS_AND_PORT_DEPENDENT, sim.PortAllocation.SEQUENTIAL),
        NATType.SYMMETRIC,
        MappingBehavior.ADDRESS_AND_PORT_DEPENDENT,
    ),
    "address-dependent mapping": (
        (S.ADDRESS_DEPENDENT, F.ADDRESS_DEPENDENT, sim.PortAllocation.PRESERVING),
        NATType.SYMMETRIC,
        MappingBehavior.ADDRESS_DEPENDENT,
    ),
}


def build(case, seed=0, loss=0.0, hairpinning=False, binding_timeout=30.0, servers=None):
    internet = sim.SimulatedInternet(seed=seed, latency=0.005, loss=loss)
    server = internet.add_host([PRIMARY[0], ALTERNATE[0]])
    (servers or STUNServerGroup(PRIMARY, ALTERNATE)).listen(server)
    nat_spec = CASES[case][0]
    if nat_spec is None:
        peer = internet.add_host("203.0.113.50")
    else:
        mapping, filtering, allocation = nat_spec
        nat = internet.add_nat(
            NAT_ADDRESS,
            mapping=mapping,
            filtering=filtering,
            allocation=allocation,
            hairpinning=hairpinning,
            binding_timeout=binding_timeout,
        )
        peer = internet.add_host("192.0.2.20", behind=nat)
    return internet, peer


@pytest.mark.parametrize("case", list(CASES))
def test_every_nat_is_classified(case):
    internet, peer = build(case)
    behavior = internet.run_until(detect_nat(peer, [PRIMARY]))
    _, expected_type, expected_mapping = CASES[case]
    assert behavior.nat_type is expected_type, behavior.describe()
    assert behavior.mapping is expected_mapping
    assert behavior.problems == ()
    assert behavior.other_address == ALTERNATE
    if CASES[case][0] is None:
        assert behavior.nat_present is False
        assert behavior.public == behavior.local
    else:
        assert behavior.nat_present is True
        assert behavior.public is not None and behavior.public[0] == NAT_ADDRESS
        assert behavior.local is not None and behavior.local[0] == "192.0.2.20"
    # a few round trips (10 ms each) plus one "no answer" window
    assert behavior.elapsed < 0.5


@pytest.mark.parametrize("case", [c for c in CASES if c != "no NAT"])
def test_classified_under_ten_percent_loss(case):
    """Twenty seeded runs each, 10 % loss on every path: no mistakes."""
    _, expected_type, expected_mapping = CASES[case]
    elapsed = []
    for seed in range(20):
        internet, peer = build(case, seed=seed, loss=0.10)
        behavior = internet.run_until(detect_nat(peer, [PRIMARY]))
        assert behavior.nat_type is expected_type, (seed, behavior.describe())
        assert behavior.mapping is expected_mapping, seed
        elapsed.append(behavior.elapsed)
    assert statistics.median(elapsed) < 0.5


@pytest.mark.parametrize("hairpinning", [True, False])
def test_hairpinning_is_measured(hairpinning):
    internet, peer = build("port-restricted cone", hairpinning=hairpinning)
    behavior = internet.run_until(detect_nat(peer, [PRIMARY]))
    assert behavior.hairpinning is hairpinning


def test_binding_lifetime_is_measured():
    internet, peer = build("port-restricted cone", binding_timeout=30.0)
    alive, dead = internet.run_until(measure_binding_lifetime(peer, PRIMARY), timeout=3600)
    assert alive <= 30.0 <= dead
    assert dead - alive <= 0.1 * 30 + 1e-9


def test_lifetime_through_detect_nat():
    internet, peer = build("full cone", binding_timeout=12.0)
    behavior = internet.run_until(detect_nat(peer, [PRIMARY], lifetime=True), timeout=3600)
    assert behavior.binding_lifetime is not None
    assert 10.0 <= behavior.binding_lifetime <= 12.0


def test_filtering_unknown_when_only_plain_servers():
    internet = sim.SimulatedInternet(seed=3)
    from twisted_nat.stun.server import BindingServer

    one = internet.add_host("203.0.113.10")
    two = internet.add_host("203.0.113.11")
    one.listenUDP(3478, BindingServer())
    two.listenUDP(3478, BindingServer())
    nat = internet.add_nat_of_type(NAT_ADDRESS, "symmetric")
    peer = internet.add_host("192.0.2.20", behind=nat)
    behavior = internet.run_until(
        detect_nat(peer, [("203.0.113.10", 3478), ("203.0.113.11", 3478)])
    )
    assert behavior.mapping is MappingBehavior.DESTINATION_DEPENDENT
    assert behavior.filtering is FilteringBehavior.UNKNOWN
    assert behavior.nat_type is NATType.SYMMETRIC
    assert any("filtering is unknown" in p for p in behavior.problems)


@pytest.mark.parametrize(
    ("case", "predictable"),
    [("symmetric, sequential ports", True), ("symmetric, random ports", False)],
)
def test_sequential_allocation_is_recognised(case, predictable):
    internet, peer = build(case)
    behavior = internet.run_until(detect_nat(peer, [PRIMARY]))
    assert (behavior.port_delta is not None) is predictable
    if predictable:
        assert behavior.port_delta == 1


def test_port_delta_rule():
    from twisted_nat.nat import port_delta

    assert port_delta([40000, 40002, 40003]) == 1
    assert port_delta([40000, 40004, 40008]) == 4
    # Other flows in between: the step divides every gap.
    assert port_delta([40000, 40005, 40014]) == 1
    assert port_delta([40000, 40006, 40010]) == 2
    assert port_delta([40000, 40200, 40201]) == 1
    assert port_delta([40000, 40300, 40301]) is None
    assert port_delta([40000, 40000, 40001]) is None
    # A flow whose first datagram was lost takes its port after a later one.
    assert port_delta([40000, 39999, 40001]) == 1
    assert port_delta([40000, 51234, 1234]) is None
    assert port_delta([40000]) is None


@pytest.mark.parametrize("second_look", [True, False])
def test_a_busy_nat_is_still_seen_to_count_in_sequence(second_look):
    """
    Another host behind the NAT opens 300 flows between the first mapping
    test and the next two: their ports lie too far apart to call the NAT
    sequential.  A second look, three flows opened at once, sees the step.
    """
    from twisted.internet.protocol import DatagramProtocol

    internet = sim.SimulatedInternet(seed=0, latency=0.005)
    server = internet.add_host([PRIMARY[0], ALTERNATE[0]])
    STUNServerGroup(PRIMARY, ALTERNATE).listen(server)
    nat = internet.add_nat(
        NAT_ADDRESS,
        mapping=S.ADDRESS_AND_PORT_DEPENDENT,
        filtering=F.ADDRESS_AND_PORT_DEPENDENT,
        allocation=sim.PortAllocation.SEQUENTIAL,
    )
    peer = internet.add_host("192.0.2.20", behind=nat)
    busy = DatagramProtocol()
    internet.add_host("192.0.2.99", behind=nat).listenUDP(0, busy)

    def open_flows() -> None:
        for port in range(300):
            busy.transport.write(b"x", ("203.0.113.99", 10000 + port))

    # Test I has passed the NAT; its answer (and so tests II and III) not yet.
    internet.clock.callLater(0.007, open_flows)
    behavior = internet.run_until(detect_nat(peer, [PRIMARY], second_look=second_look))
    assert behavior.mapping is MappingBehavior.ADDRESS_AND_PORT_DEPENDENT
    assert behavior.port_delta == (1 if second_look else None)


@pytest.mark.parametrize("unanswered", [0, 1], ids=["mapping", "filtering"])
def test_one_socket_unanswered_asks_again(unanswered, monkeypatch):
    """
    Loss takes every transmission of test I from one of discovery's two
    sockets (the mapping one, then the filtering one) while the other's is
    answered: that socket asks again, and the NAT is still classified,
    rather than reported as blocking UDP or with its filtering unknown.
    """
    from twisted_nat.address import Address
    from twisted_nat.stun.client import RetransmissionSchedule

    group = STUNServerGroup(PRIMARY, ALTERNATE)
    primary = group.member(0, 0)
    answer = primary.datagramReceived
    sources: list[Address] = []
    dropped: list[Address] = []

    def lossy(data, addr):
        if addr not in sources:
            sources.append(addr)
        # Test I is sent twice (at 0 and 1 s, failing at 2.5 s): lose both.
        if sources.index(addr) == unanswered and len(dropped) < 2:
            dropped.append(addr)
            return
        answer(data, addr)

    monkeypatch.setattr(primary, "datagramReceived", lossy)
    internet, peer = build("port-restricted cone", servers=group)
    behavior = internet.run_until(
        detect_nat(peer, [PRIMARY], timeout=2.5, first_contact=RetransmissionSchedule(rto=1.0))
    )
    assert len(dropped) == 2
    assert behavior.nat_type is NATType.PORT_RESTRICTED_CONE, behavior.describe()
    assert behavior.problems == ()
    assert 2.5 < behavior.elapsed < 3.0
