"""
A simulated internet with NATs, for testing peer-to-peer code without root.

Hole punching that works on the developer's LAN tells nothing about the
symmetric NAT a user sits behind, and real NATs need network namespaces and
root to set up.  This package builds the network in memory instead: hosts
that are Twisted reactors as far as UDP and time go (C{listenUDP},
C{callLater}), NAT boxes configured in RFC 4787 terms, and paths with
latency, jitter, loss and reordering, all on one C{task.Clock} and one
seeded random generator.  An application that embeds twisted-nat can run
its own peer-to-peer logic, unchanged, behind every kind of NAT, in
milliseconds, and the same way every run.

Two peers behind port-restricted cone NATs punch a hole: the first
datagram is dropped by the far NAT, but it opens the near one, so the
answer gets through, and from then on so does everything else::

    >>> from twisted.internet.protocol import DatagramProtocol
    >>> from twisted_nat.testing import SimulatedInternet
    >>> class Inbox(DatagramProtocol):
    ...     def __init__(self):
    ...         self.received = []
    ...     def datagramReceived(self, data, addr):
    ...         self.received.append((data, addr))
    >>> internet = SimulatedInternet(seed=1)
    >>> alice_nat = internet.add_nat_of_type("203.0.113.1", "port-restricted-cone")
    >>> bob_nat = internet.add_nat_of_type("198.51.100.1", "port-restricted-cone")
    >>> alice, bob = Inbox(), Inbox()
    >>> _ = internet.add_host("10.0.0.2", behind=alice_nat).listenUDP(4000, alice)
    >>> _ = internet.add_host("10.0.0.2", behind=bob_nat).listenUDP(5000, bob)
    >>> alice.transport.write(b"knock", ("198.51.100.1", 5000))
    >>> internet.advance(0.1)
    >>> bob.received, bob_nat.stats.dropped
    ([], 1)
    >>> bob.transport.write(b"hello", ("203.0.113.1", 4000))
    >>> internet.advance(0.1)
    >>> alice.transport.write(b"hi bob", ("198.51.100.1", 5000))
    >>> internet.advance(0.1)
    >>> alice.received, bob.received
    ([(b'hello', ('198.51.100.1', 5000))], [(b'hi bob', ('203.0.113.1', 4000))])

Our STUN client, behind a symmetric NAT, learns its public address from a
server on the public internet; hosts are reactors, so it needs no change::

    >>> from twisted_nat.stun.client import STUNClient
    >>> from twisted_nat.stun.server import BindingServer
    >>> server = internet.add_host("192.0.2.10")
    >>> _ = server.listenUDP(3478, BindingServer())
    >>> nat = internet.add_nat_of_type("203.0.113.7", "symmetric")
    >>> laptop = internet.add_host("192.168.1.20", behind=nat)
    >>> client = STUNClient(reactor=laptop)
    >>> _ = laptop.listenUDP(6000, client)
    >>> internet.run_until(client.discover([("192.0.2.10", 3478)])).mapped
    ('203.0.113.7', 6000)

Simulated time only moves when told to: L{SimulatedInternet.advance}
moves it, and L{SimulatedInternet.run_until} moves it until a Deferred
fires.  UDP only, IPv4 and IPv6, each family through NATs of its own: IPv6
addresses (C{add_host(..., ipv6=[...], firewall=Firewall())}) are global,
reached without NAT through a stateful L{Firewall} in front of a host when
it has one, or inside a NAT66 (an C{add_nat} with an IPv6 public address,
named by C{add_host(..., behind6=nat66)}), which maps and filters as the
IPv4 NATs do::

    >>> nat66 = internet.add_nat_of_type("2001:db8:7::1", "port-restricted-cone")
    >>> home = internet.add_host("192.168.1.30", behind=nat, ipv6=["fd00::2"], behind6=nat66)
    >>> server6 = internet.add_host("192.0.2.11", ipv6=["2001:db8:5::10"])
    >>> _ = server6.listenUDP(3478, BindingServer(), "::")
    >>> client6 = STUNClient(reactor=home)
    >>> _ = home.listenUDP(6000, client6, "::")
    >>> internet.run_until(client6.discover([("2001:db8:5::10", 3478)])).mapped
    ('2001:db8:7::1', 6000)
"""

from twisted_nat.testing._firewall import Firewall, FirewallStats
from twisted_nat.testing._host import NetworkStats, SimulatedHost, SimulatedPort
from twisted_nat.testing._nat import (
    CLASSIC_NAT_TYPES,
    ClassicNATType,
    FilteringBehavior,
    MappingBehavior,
    NATBox,
    NATMapping,
    NATStats,
    PortAllocation,
)
from twisted_nat.testing._network import NATSettings, SimulatedInternet
from twisted_nat.testing._running import SimulationTimeout

__all__ = [
    "CLASSIC_NAT_TYPES",
    "ClassicNATType",
    "FilteringBehavior",
    "Firewall",
    "FirewallStats",
    "MappingBehavior",
    "NATBox",
    "NATMapping",
    "NATSettings",
    "NATStats",
    "NetworkStats",
    "PortAllocation",
    "SimulatedHost",
    "SimulatedInternet",
    "SimulatedPort",
    "SimulationTimeout",
]
