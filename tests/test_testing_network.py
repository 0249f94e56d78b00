"""
The simulated internet: hosts, ports, paths and every kind of NAT, and our
own protocols running on it unchanged.
"""

from __future__ import annotations

import doctest
import itertools

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError, InvalidAddressError, MessageLengthError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUDP, IUDPTransport
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from zope.interface.verify import verifyObject

import twisted_nat.testing
from tests.fakes import Collector
from twisted_nat.errors import DiscoveryError, STUNTimeout
from twisted_nat.mux import UDPMultiplexer, listening_port_host
from twisted_nat.stun.attributes import ChangeRequest
from twisted_nat.stun.client import RetransmissionSchedule, STUNClient
from twisted_nat.stun.message import MessageClass, Method, request
from twisted_nat.stun.server import BindingServer, STUNServerGroup
from twisted_nat.testing import (
    CLASSIC_NAT_TYPES,
    FilteringBehavior,
    MappingBehavior,
    NATMapping,
    PortAllocation,
    SimulatedInternet,
    SimulationTimeout,
)

EI = MappingBehavior.ENDPOINT_INDEPENDENT
AD = MappingBehavior.ADDRESS_DEPENDENT
APD = MappingBehavior.ADDRESS_AND_PORT_DEPENDENT
F_EI = FilteringBehavior.ENDPOINT_INDEPENDENT
F_AD = FilteringBehavior.ADDRESS_DEPENDENT
F_APD = FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT

PUBLIC = "203.0.113.1"
S1, S2 = "192.0.2.1", "192.0.2.2"


def listen(host, port=0, interface=""):
    protocol = Collector()
    host.listenUDP(port, protocol, interface=interface)
    return protocol


def inside_with_servers(mapping, filtering, **nat_settings):
    """A host behind a NAT, and two public hosts with two ports each."""
    internet = SimulatedInternet()
    nat = internet.add_nat(PUBLIC, mapping, filtering, **nat_settings)
    inside = listen(internet.add_host("10.0.0.2", behind=nat), 4000)
    s1, s2 = internet.add_host(S1), internet.add_host(S2)
    servers = {
        (S1, 7000): listen(s1, 7000),
        (S1, 7001): listen(s1, 7001),
        (S2, 7000): listen(s2, 7000),
    }
    return internet, nat, inside, servers


# --- hosts and ports ---


def test_direct_hosts_exchange_datagrams_after_the_latency():
    internet = SimulatedInternet(latency=0.02)
    a = listen(internet.add_host("192.0.2.1"), 1000)
    b = listen(internet.add_host("192.0.2.2"), 2000)
    a.transport.write(b"ping", ("192.0.2.2", 2000))
    internet.advance(0.019)
    assert b.received == []
    internet.advance(0.001)
    assert b.received == [(b"ping", ("192.0.2.1", 1000))]
    b.transport.write(b"pong", ("192.0.2.1", 1000))
    internet.advance(0.02)
    assert a.received == [(b"pong", ("192.0.2.2", 2000))]
    assert internet.stats.sent == internet.stats.delivered == 2


def test_host_and_port_provide_the_reactor_interfaces():
    internet = SimulatedInternet()
    host = internet.add_host("192.0.2.1")
    protocol = listen(host, 1000)
    port = protocol.transport
    assert verifyObject(IReactorUDP, host)
    assert verifyObject(IReactorTime, host)
    assert verifyObject(IListeningPort, port)
    assert verifyObject(IUDPTransport, port)
    # BindingServer would use a raw socket's sendto, bypassing the network.
    assert not hasattr(port, "socket")
    with pytest.raises(NotImplementedError):
        port.connect("192.0.2.2", 1)


def test_host_time_is_the_shared_clock():
    clock = Clock()
    internet = SimulatedInternet(clock=clock)
    a, b = internet.add_host("192.0.2.1"), internet.add_host("192.0.2.2")
    fired: list[str] = []
    a.callLater(2.0, fired.append, "a")
    b.callLater(1.0, fired.append, "b")
    assert len(a.getDelayedCalls()) == 2
    internet.advance(2.0)
    assert fired == ["b", "a"]
    assert a.seconds() == b.seconds() == clock.seconds() == 2.0


def test_port_zero_binds_a_free_ephemeral_port_reproducibly():
    def ports(seed):
        host = SimulatedInternet(seed=seed).add_host("192.0.2.1")
        return [host.listenUDP(0, DatagramProtocol()).getHost().port for _ in range(20)]

    chosen = ports(5)
    assert len(set(chosen)) == 20
    assert all(32768 <= p < 61000 for p in chosen)
    assert ports(5) == chosen


def test_binding_a_taken_port_raises_cannot_listen():
    host = SimulatedInternet().add_host(["192.0.2.1", "192.0.2.2"])
    specific = host.listenUDP(1000, DatagramProtocol(), interface="192.0.2.1")
    with pytest.raises(CannotListenError):
        host.listenUDP(1000, DatagramProtocol(), interface="192.0.2.1")
    with pytest.raises(CannotListenError):
        host.listenUDP(1000, DatagramProtocol())
    host.listenUDP(1000, DatagramProtocol(), interface="192.0.2.2")
    host.listenUDP(2000, DatagramProtocol(), interface="0.0.0.0")
    with pytest.raises(CannotListenError):
        host.listenUDP(2000, DatagramProtocol(), interface="192.0.2.2")
    with pytest.raises(CannotListenError):
        host.listenUDP(3000, DatagramProtocol(), interface="198.51.100.1")
    specific.stopListening()
    host.listenUDP(1000, DatagramProtocol(), interface="192.0.2.1")
    assert [(p.interface, p.port) for p in host.ports()] == [
        ("192.0.2.1", 1000),
        ("192.0.2.2", 1000),
        ("0.0.0.0", 2000),
    ]


def test_wildcard_port_sends_from_first_address_and_bound_one_from_its_own():
    internet = SimulatedInternet()
    multi = internet.add_host(["192.0.2.1", "192.0.2.2"])
    peer = listen(internet.add_host("198.51.100.9"), 9)
    everywhere, second = listen(multi, 1000), listen(multi, 1001, "192.0.2.2")
    assert everywhere.transport.getHost() == IPv4Address("UDP", "0.0.0.0", 1000)
    assert second.transport.getHost() == IPv4Address("UDP", "192.0.2.2", 1001)
    everywhere.transport.write(b"a", ("198.51.100.9", 9))
    second.transport.write(b"b", ("198.51.100.9", 9))
    internet.advance(1)
    assert peer.received == [(b"a", ("192.0.2.1", 1000)), (b"b", ("192.0.2.2", 1001))]
    # A wildcard port receives on every address.
    peer.transport.write(b"c", ("192.0.2.2", 1000))
    internet.advance(1)
    assert everywhere.received == [(b"c", ("198.51.100.9", 9))]


def test_write_refuses_what_a_real_port_refuses():
    internet = SimulatedInternet()
    port = listen(internet.add_host("192.0.2.1"), 1000).transport
    with pytest.raises(InvalidAddressError):
        port.write(b"x", ("stun.example.com", 3478))
    with pytest.raises(ValueError):
        port.write(b"x", None)
    with pytest.raises(MessageLengthError):
        port.write(b"x" * 65508, ("192.0.2.2", 1))
    port.stopListening()
    with pytest.raises(OSError):
        port.write(b"x", ("192.0.2.2", 1))


def test_stop_listening_stops_the_protocol_and_drops_datagrams_in_flight():
    internet = SimulatedInternet()
    sender = listen(internet.add_host("192.0.2.1"), 1000)
    receiver = listen(internet.add_host("192.0.2.2"), 2000)
    sender.transport.write(b"late", ("192.0.2.2", 2000))
    port = receiver.transport
    assert port.stopListening().called
    assert receiver.stopped == 1
    assert port.stopListening().called
    assert receiver.stopped == 1
    internet.advance(1)
    assert receiver.received == []
    assert internet.stats.unreachable == 1


def test_datagrams_longer_than_max_packet_size_are_truncated():
    internet = SimulatedInternet()
    receiver = Collector()
    internet.add_host("192.0.2.2").listenUDP(2000, receiver, maxPacketSize=4)
    sender = listen(internet.add_host("192.0.2.1"), 1000)
    sender.transport.write(b"abcdefgh", ("192.0.2.2", 2000))
    internet.advance(1)
    assert receiver.received == [(b"abcd", ("192.0.2.1", 1000))]
    assert internet.stats.truncated == 1


def test_unowned_addresses_and_unbound_ports_swallow_datagrams():
    internet = SimulatedInternet()
    nat = internet.add_nat_of_type(PUBLIC, "full-cone")
    inside = listen(internet.add_host("10.0.0.2", behind=nat), 4000)
    public = listen(internet.add_host(S1), 1000)
    inside.transport.write(b"nobody", ("198.51.100.200", 1))
    public.transport.write(b"nobody", ("10.0.0.2", 4000))
    public.transport.write(b"closed", (S1, 9999))
    internet.advance(1)
    assert internet.stats.unroutable == 2
    assert internet.stats.unreachable == 1
    # The NAT still made a mapping: it cannot know nobody is there.
    assert [m.internal for m in nat.mappings()] == [("10.0.0.2", 4000)]


def test_addresses_are_unique_per_address_space_only():
    internet = SimulatedInternet()
    home1 = internet.add_nat_of_type("203.0.113.1", "full-cone")
    home2 = internet.add_nat_of_type("203.0.113.2", "full-cone")
    internet.add_host("10.0.0.2", behind=home1)
    internet.add_host("10.0.0.2", behind=home2)
    with pytest.raises(ValueError):
        internet.add_host("10.0.0.2", behind=home1)
    with pytest.raises(ValueError):
        internet.add_host("203.0.113.1")
    with pytest.raises(ValueError):
        internet.add_host("2001:db8::1")
    with pytest.raises(ValueError):
        internet.add_nat_of_type("203.0.113.3", "cone-ish")  # type: ignore[arg-type]


# --- mapping and filtering ---

EVERY_NAT = [
    pytest.param(m, f, id=f"{m.value}-mapping/{f.value}-filtering")
    for m, f in itertools.product(MappingBehavior, FilteringBehavior)
]

MAPPING_EXPECTED = {
    # Which of the three destinations share a public port with the first.
    EI: [True, True, True],
    AD: [True, True, False],
    APD: [True, False, False],
}

FILTERING_EXPECTED = {
    # Which of the three remote endpoints get in after the inside host has
    # sent to the first one only.
    F_EI: [True, True, True],
    F_AD: [True, True, False],
    F_APD: [True, False, False],
}


@pytest.mark.parametrize(("mapping", "filtering"), EVERY_NAT)
def test_mapping_behaviour(mapping, filtering):
    internet, nat, inside, servers = inside_with_servers(mapping, filtering)
    for destination in servers:
        inside.transport.write(b"hello", destination)
    internet.advance(1)
    seen = [server.received[0][1] for server in servers.values()]
    assert all(host == PUBLIC for host, _ in seen)
    assert [port == seen[0][1] for _, port in seen] == MAPPING_EXPECTED[mapping]
    assert len(nat.mappings()) == len({port for _, port in seen})


@pytest.mark.parametrize(("mapping", "filtering"), EVERY_NAT)
def test_filtering_behaviour(mapping, filtering):
    internet, nat, inside, servers = inside_with_servers(mapping, filtering)
    first = next(iter(servers))
    inside.transport.write(b"open", first)
    internet.advance(1)
    public_endpoint = servers[first].received[0][1]
    for (host, port), server in servers.items():
        server.transport.write(f"from {host}:{port}".encode(), public_endpoint)
    internet.advance(1)
    admitted = [
        (f"from {host}:{port}".encode(), (host, port)) in inside.received for host, port in servers
    ]
    assert admitted == FILTERING_EXPECTED[filtering]
    assert nat.stats.filtered == admitted.count(False)


def test_mappings_snapshot_records_keys_contacts_and_expiry():
    internet, nat, inside, servers = inside_with_servers(AD, F_APD, binding_timeout=10.0)
    inside.transport.write(b"a", (S1, 7000))
    inside.transport.write(b"b", (S1, 7001))
    internet.advance(2)
    [mapping] = nat.mappings()
    assert mapping == NATMapping(
        internal=("10.0.0.2", 4000),
        external=(PUBLIC, 4000),
        remote_host=S1,
        remote_port=None,
        contacted=frozenset({(S1, 7000), (S1, 7001)}),
        expires_at=10.0,
    )


def test_inbound_without_a_mapping_is_dropped():
    internet, nat, inside, servers = inside_with_servers(EI, F_EI)
    servers[(S1, 7000)].transport.write(b"unsolicited", (PUBLIC, 4000))
    internet.advance(1)
    assert inside.received == []
    assert nat.stats.dropped == 1


@pytest.mark.parametrize(
    ("kind", "mapping", "filtering"),
    [(kind, *behaviours) for kind, behaviours in CLASSIC_NAT_TYPES.items()],
)
def test_classic_types_are_shorthands(kind, mapping, filtering):
    nat = SimulatedInternet().add_nat_of_type(PUBLIC, kind, hairpinning=True)
    assert (nat.mapping, nat.filtering, nat.hairpinning) == (mapping, filtering, True)


# --- port allocation ---


def public_ports(nat_settings, inside_ports, destinations=((S1, 7000),), seed=0):
    """The public port each (inside port, destination) pair is seen from."""
    internet = SimulatedInternet(seed=seed)
    nat = internet.add_nat(PUBLIC, **nat_settings)
    server = listen(internet.add_host(S1), 7000)
    listen(internet.add_host(S2), 7000)
    host = internet.add_host("10.0.0.2", behind=nat)
    senders = [listen(host, port) for port in inside_ports]
    for sender in senders:
        for destination in destinations:
            sender.transport.write(b"x", destination)
    internet.advance(1)
    assert server.received
    return [port for _, (_, port) in server.received], nat


def test_preserving_allocation_keeps_the_port_else_takes_the_next_free():
    internet = SimulatedInternet()
    nat = internet.add_nat_of_type(PUBLIC, "full-cone")
    server = listen(internet.add_host(S1), 7000)
    for address in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):
        listen(internet.add_host(address, behind=nat), 5000).transport.write(b"x", (S1, 7000))
    internet.advance(1)
    assert [addr for _, addr in server.received] == [
        (PUBLIC, 5000),
        (PUBLIC, 5001),
        (PUBLIC, 5002),
    ]


def test_sequential_allocation_counts_up_through_the_pool():
    settings = dict(
        mapping=APD,
        filtering=F_APD,
        allocation=PortAllocation.SEQUENTIAL,
        ports=range(20000, 20100),
    )
    ports, _ = public_ports(settings, [4000, 4001], destinations=[(S1, 7000), (S2, 7000)])
    # Two mappings per inside port; S1 saw the first and the third.
    assert ports == [20000, 20002]


def test_random_allocation_reproduces_with_the_seed():
    settings = dict(mapping=EI, filtering=F_EI, allocation=PortAllocation.RANDOM)
    first, _ = public_ports(settings, range(4000, 4010), seed=11)
    again, _ = public_ports(settings, range(4000, 4010), seed=11)
    other, _ = public_ports(settings, range(4000, 4010), seed=12)
    assert first == again
    assert first != other
    assert len(set(first)) == 10
    assert first != sorted(first)


def test_an_exhausted_pool_drops_new_flows():
    settings = dict(mapping=EI, filtering=F_EI, ports=range(20000, 20002))
    ports, nat = public_ports(settings, [4000, 4001, 4002])
    assert ports == [20000, 20001]
    assert nat.stats.dropped == 1


# --- binding lifetime ---


def test_bindings_expire_after_the_timeout_of_inactivity():
    internet, nat, inside, servers = inside_with_servers(EI, F_EI, binding_timeout=30.0)
    server = servers[(S1, 7000)]
    inside.transport.write(b"open", (S1, 7000))
    internet.advance(29.9)
    assert len(nat.mappings()) == 1
    internet.advance(0.2)
    assert nat.mappings() == []
    assert nat.stats.expired == 1
    server.transport.write(b"too late", (PUBLIC, 4000))
    internet.advance(1)
    assert inside.received == []
    assert nat.stats.dropped == 1


def test_outbound_traffic_refreshes_a_binding():
    internet, nat, inside, servers = inside_with_servers(EI, F_EI, binding_timeout=30.0)
    inside.transport.write(b"open", (S1, 7000))
    internet.advance(20)
    inside.transport.write(b"keep-alive", (S2, 7000))
    internet.advance(25)
    [mapping] = nat.mappings()
    assert mapping.expires_at == 50.0
    servers[(S1, 7000)].transport.write(b"still here", (PUBLIC, 4000))
    internet.advance(1)
    assert inside.received == [(b"still here", (S1, 7000))]


@pytest.mark.parametrize("inbound_refresh", [True, False])
def test_inbound_traffic_refreshes_only_if_the_nat_says_so(inbound_refresh):
    internet, nat, inside, servers = inside_with_servers(
        EI, F_EI, binding_timeout=30.0, inbound_refresh=inbound_refresh
    )
    inside.transport.write(b"open", (S1, 7000))
    internet.advance(20)
    servers[(S1, 7000)].transport.write(b"server keep-alive", (PUBLIC, 4000))
    internet.advance(15)
    assert len(nat.mappings()) == (1 if inbound_refresh else 0)


def test_a_new_mapping_after_expiry_may_get_a_new_port():
    internet = SimulatedInternet()
    nat = internet.add_nat(
        PUBLIC, EI, F_EI, allocation=PortAllocation.SEQUENTIAL, binding_timeout=5.0
    )
    server = listen(internet.add_host(S1), 7000)
    inside = listen(internet.add_host("10.0.0.2", behind=nat), 4000)
    inside.transport.write(b"x", (S1, 7000))
    internet.advance(10)
    inside.transport.write(b"x", (S1, 7000))
    internet.advance(1)
    assert [addr for _, addr in server.received] == [(PUBLIC, 1024), (PUBLIC, 1025)]


# --- hairpinning ---


@pytest.mark.parametrize("hairpinning", [True, False])
def test_hairpinning(hairpinning):
    internet = SimulatedInternet()
    nat = internet.add_nat_of_type(PUBLIC, "full-cone", hairpinning=hairpinning)
    a = listen(internet.add_host("10.0.0.2", behind=nat), 4000)
    b = listen(internet.add_host("10.0.0.3", behind=nat), 4001)
    server = listen(internet.add_host(S1), 7000)
    b.transport.write(b"register", (S1, 7000))
    internet.advance(1)
    [(_, b_public)] = server.received
    a.transport.write(b"via the public address", b_public)
    internet.advance(1)
    if hairpinning:
        assert b.received == [(b"via the public address", (PUBLIC, 4000))]
        assert nat.stats.hairpinned == 1
    else:
        assert b.received == []
        assert nat.stats.dropped == 1


def test_hairpinned_datagrams_are_filtered_like_any_inbound():
    internet = SimulatedInternet()
    nat = internet.add_nat_of_type(PUBLIC, "port-restricted-cone", hairpinning=True)
    a = listen(internet.add_host("10.0.0.2", behind=nat), 4000)
    b = listen(internet.add_host("10.0.0.3", behind=nat), 4001)
    b.transport.write(b"register", (S1, 7000))
    a.transport.write(b"first", (PUBLIC, 4001))
    internet.advance(1)
    assert nat.stats.filtered == 1
    b.transport.write(b"punch", (PUBLIC, 4000))
    internet.advance(1)
    a.transport.write(b"second", (PUBLIC, 4001))
    internet.advance(1)
    assert a.received == [(b"punch", (PUBLIC, 4001))]
    assert b.received == [(b"second", (PUBLIC, 4000))]


# --- NAT behind NAT ---


def test_nat_behind_nat():
    internet = SimulatedInternet()
    carrier = internet.add_nat_of_type(PUBLIC, "port-restricted-cone")
    home = internet.add_nat_of_type("100.64.0.2", "full-cone", behind=carrier)
    inside = listen(internet.add_host("192.168.1.2", behind=home), 4000)
    server = listen(internet.add_host(S1), 7000)
    inside.transport.write(b"out", (S1, 7000))
    internet.advance(1)
    assert server.received == [(b"out", (PUBLIC, 4000))]
    server.transport.write(b"back", (PUBLIC, 4000))
    internet.advance(1)
    assert inside.received == [(b"back", (S1, 7000))]
    assert [m.internal for m in carrier.mappings()] == [("100.64.0.2", 4000)]
    assert [m.internal for m in home.mappings()] == [("192.168.1.2", 4000)]


def test_two_homes_behind_one_carrier_nat_meet_only_if_it_hairpins():
    for hairpinning in (True, False):
        internet = SimulatedInternet()
        carrier = internet.add_nat_of_type(PUBLIC, "full-cone", hairpinning=hairpinning)
        homes = [
            internet.add_nat_of_type(f"100.64.0.{i}", "full-cone", behind=carrier) for i in (2, 3)
        ]
        a = listen(internet.add_host("192.168.1.2", behind=homes[0]), 4000)
        b = listen(internet.add_host("192.168.1.2", behind=homes[1]), 5000)
        b.transport.write(b"open", (S1, 7000))
        a.transport.write(b"hi", (PUBLIC, 5000))
        internet.advance(1)
        assert b.received == ([(b"hi", (PUBLIC, 4000))] if hairpinning else [])


# --- the path: loss, latency, jitter, reordering ---


def blast(internet, count=1000, behind=None):
    receiver = listen(internet.add_host(S2), 2000)
    sender = listen(internet.add_host("10.0.0.2" if behind else S1, behind=behind), 1000)
    for i in range(count):
        sender.transport.write(str(i).encode(), (S2, 2000))
    internet.advance(5)
    return [int(data) for data, _ in receiver.received]


def test_loss_is_roughly_the_configured_fraction_and_reproducible():
    got = blast(SimulatedInternet(seed=3, loss=0.2))
    assert 750 <= len(got) <= 850
    assert blast(SimulatedInternet(seed=3, loss=0.2)) == got
    assert blast(SimulatedInternet(seed=4, loss=0.2)) != got


def test_a_lossy_nat_loses_its_share_too():
    internet = SimulatedInternet(seed=1)
    nat = internet.add_nat_of_type(PUBLIC, "full-cone", loss=0.5)
    got = blast(internet, behind=nat)
    assert 420 <= len(got) <= 580
    assert nat.stats.lost == 1000 - len(got)


def test_a_nat_loses_the_inbound_datagrams_a_test_chooses():
    internet = SimulatedInternet()
    nat = internet.add_nat_of_type(PUBLIC, "full-cone")
    inside = listen(internet.add_host("10.0.0.2", behind=nat), 4000)
    outside = listen(internet.add_host(S1), 1000)
    asked = []

    def odd_ones(source, destination):
        asked.append((source, destination))
        return int(internet.clock.seconds()) % 2 == 1

    nat.lose_inbound = odd_ones
    inside.transport.write(b"open", (S1, 1000))
    internet.advance(0.5)
    for i in range(4):
        outside.transport.write(str(i).encode(), (PUBLIC, 4000))
        internet.advance(1)
    assert [data for data, _ in inside.received] == [b"0", b"2"]
    assert asked == [((S1, 1000), (PUBLIC, 4000))] * 4
    assert nat.stats.lost == 2
    assert outside.received == [(b"open", (PUBLIC, 4000))]  # outbound: never asked
    nat.lose_inbound = None
    outside.transport.write(b"4", (PUBLIC, 4000))
    internet.advance(1)
    assert inside.received[-1] == (b"4", (S1, 1000))


class Timed(DatagramProtocol):
    """Records when each datagram arrived, as well as what and from where."""

    def __init__(self, clock):
        self.clock = clock
        self.arrivals = []

    def datagramReceived(self, datagram, addr):
        self.arrivals.append((datagram, addr, self.clock.seconds()))


def test_jitter_stays_within_bounds():
    internet = SimulatedInternet(latency=0.01, jitter=0.02, seed=2)
    receiver = Timed(internet.clock)
    internet.add_host(S2).listenUDP(2000, receiver)
    sender = listen(internet.add_host(S1), 1000)
    for _ in range(100):
        sender.transport.write(b"x", (S2, 2000))
    internet.advance(1)
    arrivals = [t for _, _, t in receiver.arrivals]
    assert len(arrivals) == 100
    assert all(0.01 <= t <= 0.03 for t in arrivals)
    assert max(arrivals) - min(arrivals) > 0.01


def test_order_is_kept_without_jitter_or_reordering():
    assert blast(SimulatedInternet(), count=200) == list(range(200))


def test_reordering_delays_some_datagrams_past_later_ones():
    got = blast(SimulatedInternet(reorder=0.1, seed=5), count=200)
    assert sorted(got) == list(range(200))
    assert got != list(range(200))
    assert got == blast(SimulatedInternet(reorder=0.1, seed=5), count=200)


def test_filtering_happens_on_arrival_so_simultaneous_punches_pass():
    internet = SimulatedInternet(latency=0.05)
    nats = [internet.add_nat_of_type(f"203.0.113.{i}", "symmetric") for i in (1, 2)]
    a = listen(internet.add_host("10.0.0.2", behind=nats[0]), 4000)
    b = listen(internet.add_host("10.0.0.2", behind=nats[1]), 4000)
    a.transport.write(b"a", ("203.0.113.2", 4000))
    internet.advance(0.01)
    b.transport.write(b"b", ("203.0.113.1", 4000))
    internet.advance(1)
    assert a.received == [(b"b", ("203.0.113.2", 4000))]
    assert b.received == [(b"a", ("203.0.113.1", 4000))]


# --- protocols that misbehave ---


class Exploding(DatagramProtocol):
    def __init__(self):
        self.calls = 0

    def datagramReceived(self, datagram, addr):
        self.calls += 1
        raise RuntimeError("protocol bug")


def test_a_protocol_raising_is_logged_and_the_network_carries_on():
    internet = SimulatedInternet()
    bad = Exploding()
    internet.add_host(S2).listenUDP(2000, bad)
    good = listen(internet.add_host("192.0.2.3"), 3000)
    sender = listen(internet.add_host(S1), 1000)
    with capturedLogs() as events:
        sender.transport.write(b"1", (S2, 2000))
        sender.transport.write(b"2", ("192.0.2.3", 3000))
        sender.transport.write(b"3", (S2, 2000))
        internet.advance(1)
    assert bad.calls == 2
    assert good.received == [(b"2", (S1, 1000))]
    assert internet.stats.protocol_errors == 2
    failures = [e for e in events if "log_failure" in e]
    assert len(failures) == 2
    assert failures[0]["log_failure"].check(RuntimeError)


# --- driving the clock ---


def test_advance_runs_each_call_at_its_own_time():
    internet = SimulatedInternet()
    host = internet.add_host(S1)
    times = []

    def tick():
        times.append(host.seconds())
        if len(times) < 3:
            host.callLater(1.5, tick)

    host.callLater(1.0, tick)
    internet.advance(10)
    assert times == [1.0, 2.5, 4.0]
    assert internet.clock.seconds() == 10


def test_run_until_returns_results_raises_failures_and_awaits_coroutines():
    internet = SimulatedInternet()
    host = internet.add_host(S1)
    assert internet.run_until(succeed(3)) == 3
    with pytest.raises(ZeroDivisionError):
        internet.run_until(fail(ZeroDivisionError()))

    d: Deferred[str] = Deferred()
    host.callLater(0.0105, d.callback, "late")
    assert internet.run_until(d, step=0.001) == "late"
    assert internet.clock.seconds() == pytest.approx(0.011)

    async def wait():
        later: Deferred[str] = Deferred()
        host.callLater(100, later.callback, "much later")
        return await later

    assert internet.run_until(wait(), timeout=200) == "much later"


def test_run_until_gives_up_clearly():
    internet = SimulatedInternet()
    host = internet.add_host(S1)
    with pytest.raises(SimulationTimeout, match="nothing is scheduled"):
        internet.run_until(Deferred())
    assert internet.clock.seconds() == 0
    host.callLater(1000, lambda: None)
    with pytest.raises(SimulationTimeout, match="within 60"):
        internet.run_until(Deferred())
    assert internet.clock.seconds() == 60


def test_runs_reproduce_with_the_seed():
    def trace(seed):
        internet = SimulatedInternet(seed=seed, jitter=0.01, loss=0.1, reorder=0.1)
        nat = internet.add_nat_of_type(PUBLIC, "symmetric", allocation=PortAllocation.RANDOM)
        receiver = Timed(internet.clock)
        internet.add_host(S2).listenUDP(2000, receiver)
        sender = listen(internet.add_host("10.0.0.2", behind=nat), 0)
        for i in range(100):
            sender.transport.write(str(i).encode(), (S2, 2000))
        internet.advance(1)
        return receiver.arrivals

    assert trace(9) == trace(9)
    assert trace(9) != trace(10)


# --- our protocols on the simulated internet ---


def stun_behind(nat_settings, port=5000, schedule=None, timeout=5.0):
    internet = SimulatedInternet()
    server = internet.add_host("192.0.2.10")
    server.listenUDP(3478, BindingServer())
    nat = internet.add_nat(PUBLIC, **nat_settings)
    host = internet.add_host("10.0.0.2", behind=nat)
    client = STUNClient(reactor=host, schedule=schedule, timeout=timeout)
    host.listenUDP(port, client)
    return internet, nat, client


@pytest.mark.parametrize(("mapping", "filtering"), EVERY_NAT)
def test_stun_discovery_through_every_nat_finds_its_public_address(mapping, filtering):
    internet, nat, client = stun_behind(dict(mapping=mapping, filtering=filtering))
    result = internet.run_until(client.discover([("192.0.2.10", 3478)]))
    assert result.mapped == (PUBLIC, 5000)
    assert result.local == ("0.0.0.0", 5000)
    assert result.rtt == pytest.approx(0.01)


def test_stun_discovery_on_a_lost_path_times_out_on_schedule():
    internet, nat, client = stun_behind(dict(mapping=EI, filtering=F_EI, loss=1.0), timeout=60.0)
    with pytest.raises(DiscoveryError):
        internet.run_until(client.discover([("192.0.2.10", 3478)]))
    assert internet.clock.seconds() == pytest.approx(client.schedule.total, abs=0.01)
    assert client.stats.transmissions == 7


def test_stun_client_through_the_multiplexer():
    internet = SimulatedInternet()
    internet.add_host("192.0.2.10").listenUDP(3478, BindingServer())
    nat = internet.add_nat_of_type(PUBLIC, "symmetric", allocation=PortAllocation.SEQUENTIAL)
    host = internet.add_host("10.0.0.2", behind=nat)
    mux = UDPMultiplexer()
    host.listenUDP(5000, mux)
    client = STUNClient(reactor=host)
    mux.add_stun(client, [Method.BINDING], [MessageClass.SUCCESS, MessageClass.ERROR])
    result = internet.run_until(client.discover([("192.0.2.10", 3478)]))
    assert result.mapped == (PUBLIC, 1024)
    assert mux.stats.delivered == 1


def rfc5780_setup(kind=None):
    internet = SimulatedInternet()
    server = internet.add_host(["192.0.2.1", "192.0.2.2"])
    group = STUNServerGroup(("192.0.2.1", 3478), ("192.0.2.2", 3479))
    ports = group.listen(server)
    assert sorted(listening_port_host(p) for p in ports) == [
        ("192.0.2.1", 3478),
        ("192.0.2.1", 3479),
        ("192.0.2.2", 3478),
        ("192.0.2.2", 3479),
    ]
    behind = internet.add_nat_of_type(PUBLIC, kind) if kind else None
    host = internet.add_host("10.0.0.2" if behind else "198.51.100.7", behind=behind)
    client = STUNClient(reactor=host, schedule=RetransmissionSchedule(rto=0.1, rc=3, rm=4))
    host.listenUDP(5000, client)
    return internet, group, client


def change_request(client, change_ip, change_port):
    message = request(attributes=[ChangeRequest(change_ip, change_port)])
    return client.request(message, ("192.0.2.1", 3478), match_source=False)


def test_server_group_on_a_two_address_host_answers_change_requests_from_elsewhere():
    internet, group, client = rfc5780_setup()
    both = internet.run_until(change_request(client, True, True))
    assert both.source == ("192.0.2.2", 3479)
    assert both.response_origin == ("192.0.2.2", 3479)
    assert both.mapped_address == ("198.51.100.7", 5000)
    port_only = internet.run_until(change_request(client, False, True))
    assert port_only.source == ("192.0.2.1", 3479)
    plain = internet.run_until(client.binding_request(("192.0.2.1", 3478)))
    assert plain.other_address == ("192.0.2.2", 3479)
    assert group.stats.answered == 3


@pytest.mark.parametrize(
    ("kind", "from_other_address", "from_other_port"),
    [
        ("full-cone", True, True),
        ("restricted-cone", False, True),
        ("port-restricted-cone", False, False),
    ],
)
def test_change_requests_pass_only_what_the_filtering_admits(
    kind, from_other_address, from_other_port
):
    # This is how RFC 5780 behaviour discovery tells the filtering apart.
    internet, group, client = rfc5780_setup(kind)

    def answered(d):
        try:
            internet.run_until(d)
        except STUNTimeout:
            return False
        return True

    assert answered(change_request(client, True, True)) is from_other_address
    assert answered(change_request(client, False, True)) is from_other_port


def test_package_docstring_example_runs():
    failures, tried = doctest.testmod(twisted_nat.testing, raise_on_error=False)
    assert tried > 10
    assert failures == 0
