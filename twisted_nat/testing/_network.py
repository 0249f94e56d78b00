"""
The simulated internet: its address spaces, the paths between them, and the
one clock they run on.

Everything happens on one C{task.Clock} and every random choice comes from
one seeded C{random.Random}, so a failing test fails the same way each time
it runs.  A datagram's journey has two halves.  When it is sent, it climbs
out through the sender's NATs (which create and refresh mappings then, as a
NAT next to the sender would) until it reaches the address space in which
its destination lives.  It then spends the path's delay in flight, and on
arrival descends through the receiver's NATs (whose filters judge it then,
as a NAT next to the receiver would).  That split is what makes simultaneous
hole punching behave as it does on a real network: each side's packet is
filtered at the moment it arrives, after the other side's has opened the
way, or not.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Coroutine, Sequence
from typing import Any, TypedDict, TypeVar, Unpack

from twisted.internet.abstract import isIPAddress
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger

from twisted_nat.address import Address
from twisted_nat.testing._firewall import Firewall
from twisted_nat.testing._host import NetworkStats, SimulatedHost
from twisted_nat.testing._nat import (
    CLASSIC_NAT_TYPES,
    ClassicNATType,
    FilteringBehavior,
    MappingBehavior,
    NATBox,
    PortAllocation,
)
from twisted_nat.testing._running import advance_to, run_until

T = TypeVar("T")


class NATSettings(TypedDict, total=False):
    """The keywords of L{SimulatedInternet.add_nat} that a classic type leaves open."""

    allocation: PortAllocation
    hairpinning: bool
    binding_timeout: float
    behind: NATBox | None
    loss: float
    inbound_refresh: bool
    ports: range


class _Realm:
    """
    One address space: the public internet, or the inside of one NAT.

    Private addresses repeat from one NAT to the next (every home is
    10.0.0.0/8), so each realm has its own table of who owns which address.
    """

    def __init__(self, nat: NATBox | None) -> None:
        self.nat = nat
        self.nodes: dict[str, SimulatedHost | NATBox] = {}

    def claim(self, address: str, node: SimulatedHost | NATBox) -> None:
        if address in self.nodes:
            where = f"behind {self.nat!r}" if self.nat is not None else "on the public internet"
            raise ValueError(f"{address} is already in use {where}")
        self.nodes[address] = node


class SimulatedInternet:
    """
    An in-memory network of hosts and NATs on one C{task.Clock}: IPv4, and
    IPv6 with or without NAT66.

    @param clock: the clock everything runs on; a new one by default.
    @param seed: seeds the one random generator behind loss, jitter,
        reordering, ephemeral ports and random port allocation.
    @param latency: the one-way delay of a whole path, in seconds (5 ms by
        default), however many NATs it crosses (translation itself takes no
        time), and the same between two hosts on one LAN as across the
        world.
    @param jitter: up to this much more delay, uniformly distributed, per
        datagram; enough of it reorders datagrams sent close together.
    @param loss: the probability that a path loses a datagram, on top of
        any loss configured on the NATs it crosses.
    @param reorder: the probability that a datagram is held back by one to
        three times the base delay (at least a millisecond), so that it
        arrives after datagrams sent shortly after it.

    @ivar max_payload: the largest UDP payload a path carries (its MTU
        less the headers), or None for any: a larger datagram is lost, as
        it is on a real path when it leaves with the don't-fragment bit.
    """

    log = Logger()

    def __init__(
        self,
        clock: Clock | None = None,
        seed: int = 0,
        latency: float = 0.005,
        jitter: float = 0.0,
        loss: float = 0.0,
        reorder: float = 0.0,
    ) -> None:
        if latency < 0 or jitter < 0:
            raise ValueError("latency and jitter cannot be negative")
        for name, p in (("loss", loss), ("reorder", reorder)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability, between 0 and 1")
        self.clock = clock if clock is not None else Clock()
        self.seed = seed
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self.reorder = reorder
        self.max_payload: int | None = None
        self.stats = NetworkStats()
        self._random = random.Random(seed)
        # Each NAT's inside, and the public internet under None.
        self._realms: dict[NATBox | None, _Realm] = {None: _Realm(None)}

    # --- building the network ---

    def add_host(
        self,
        addresses: str | Sequence[str],
        behind: NATBox | None = None,
        ipv6: Sequence[str] = (),
        firewall: Firewall | None = None,
        behind6: NATBox | None = None,
    ) -> SimulatedHost:
        """
        A host with these IPv4 addresses, on the public internet or on the
        inside of the NAT C{behind}.  Addresses must be unique within that
        address space only: two homes may both be 10.0.0.2.

        @param ipv6: its IPv6 addresses: global ones, reached directly and
            unique on the whole internet, or, with C{behind6}, addresses
            inside that NAT66 (a home's fd00::2 may be another's too).
        @param firewall: a stateful L{Firewall} in front of them, as a home
            router's for IPv6; none by default.
        @param behind6: the NAT66 (an L{add_nat} with an IPv6 public
            address) its IPv6 addresses are behind, or None for none.
        """
        if isinstance(addresses, str):
            addresses = (addresses,)
        addresses = tuple(addresses)
        if not addresses:
            raise ValueError("a host needs at least one address")
        for address in addresses:
            _check_ipv4(address)
        addresses6 = tuple(str(ipaddress.IPv6Address(a)) for a in ipv6)
        for group in (addresses, addresses6):
            if len(set(group)) != len(group):
                raise ValueError(f"duplicate address in {group}")
        _check_family(behind, ipv6=False, what="behind")
        _check_family(behind6, ipv6=True, what="behind6")
        realm, realm6 = self._realms[behind], self._realms[behind6]
        host = SimulatedHost(self, addresses, behind, addresses6, firewall, behind6)
        for address, where in [
            *((a, realm) for a in addresses),
            *((a, realm6) for a in addresses6),
        ]:
            if address in where.nodes:
                raise ValueError(f"{address} is already in use there")
        for address in addresses:
            realm.claim(address, host)
        for address in addresses6:
            realm6.claim(address, host)
        return host

    def add_nat(
        self,
        public_address: str,
        mapping: MappingBehavior,
        filtering: FilteringBehavior,
        allocation: PortAllocation = PortAllocation.PRESERVING,
        hairpinning: bool = False,
        binding_timeout: float = 30.0,
        behind: NATBox | None = None,
        loss: float = 0.0,
        inbound_refresh: bool = True,
        ports: range = range(1024, 65536),
    ) -> NATBox:
        """
        A NAT whose public side is C{public_address}, on the public internet
        or, for carrier-grade NAT and the like, inside the NAT C{behind}.
        Hosts go behind it with C{add_host(..., behind=nat)}.  An IPv6
        C{public_address} makes a NAT66, with the same behaviours, for
        IPv6 addresses: C{add_host(..., behind6=nat)}, and C{behind} a
        NAT66 too if anything.

        @param allocation: how new mappings pick a public port from C{ports}.
        @param hairpinning: whether a datagram from the inside to the NAT's
            own public address comes back in (filtered like any inbound
            datagram, from the sender's mapping) or is dropped.
        @param binding_timeout: seconds of inactivity after which a mapping
            lapses; 30 s is a common consumer-router value, RFC 4787 asks
            for at least 120 s.
        @param loss: the probability that this NAT loses a datagram passing
            through it, either way.
        @param inbound_refresh: whether admitted inbound datagrams refresh
            a mapping's timer, as well as outbound ones (which always do).
        @param ports: the pool of public ports mappings are allocated from.
        """
        ipv6 = ":" in public_address
        if ipv6:
            public_address = str(ipaddress.IPv6Address(public_address))
        else:
            _check_ipv4(public_address)
        _check_family(behind, ipv6, what="behind")
        outside = self._realms[behind]
        nat = NATBox(
            public_address,
            mapping,
            filtering,
            allocation,
            hairpinning,
            binding_timeout,
            inbound_refresh,
            loss,
            ports,
            behind,
            self.clock,
            self._random,
        )
        outside.claim(public_address, nat)
        self._realms[nat] = _Realm(nat)
        return nat

    def add_nat_of_type(
        self, public_address: str, kind: ClassicNATType, **settings: Unpack[NATSettings]
    ) -> NATBox:
        """
        L{add_nat} with the mapping and filtering of one of RFC 3489's four
        classic types (L{CLASSIC_NAT_TYPES}): "full-cone",
        "restricted-cone", "port-restricted-cone" or "symmetric".  Other
        keywords are L{add_nat}'s.
        """
        try:
            mapping, filtering = CLASSIC_NAT_TYPES[kind]
        except KeyError:
            raise ValueError(
                f"unknown NAT type {kind!r}; one of {', '.join(CLASSIC_NAT_TYPES)}"
            ) from None
        return self.add_nat(public_address, mapping, filtering, **settings)

    # --- running it ---

    def advance(self, seconds: float) -> None:
        """
        Move the clock C{seconds} forward, running each scheduled call at
        its own time (C{Clock.advance} alone would run them all at the end,
        so a retransmission timer would see the wrong time).
        """
        if seconds < 0:
            raise ValueError("time only moves forward")
        advance_to(self.clock, self.clock.seconds() + seconds)

    def run_until(
        self,
        deferred: Deferred[T] | Coroutine[Deferred[Any], Any, T],
        timeout: float = 60.0,
        step: float = 0.001,
    ) -> T:
        """
        Advance the clock in steps of C{step} until C{deferred} (or a
        coroutine, wrapped in one) fires, and return its result or raise
        its failure.

        Each scheduled call runs at its own time within a step, and
        stretches with nothing scheduled are crossed in one move, so a
        long timeout costs nothing; the clock is left at the end of the
        step in which the Deferred fired.

        @raise SimulationTimeout: the Deferred has not fired after
            C{timeout} simulated seconds, or nothing is left scheduled that
            could ever fire it.
        """
        return run_until(self.clock, deferred, timeout, step)

    # --- the paths ---

    def _send(
        self, sender: SimulatedHost, source: Address, destination: Address, data: bytes
    ) -> None:
        """
        Climb out through the sender's NATs of the destination's family
        (IPv6 first through its firewall, which opens the flow) to the
        address space where the destination lives, then put the datagram
        in flight.
        """
        self.stats.sent += 1
        if ":" in destination[0]:
            if sender.firewall is not None:
                sender.firewall.outbound(source, destination, self.clock.seconds())
            realm = self._realms[sender.behind6]
        else:
            realm = self._realms[sender.behind]
        while True:
            nat = realm.nat
            if nat is not None and destination[0] == nat.public_address:
                # Hairpinning: out through the mapping, then back in.
                translated = None if nat._lose() else nat._outbound(source, destination)
                if translated is None:
                    return
                if not nat.hairpinning:
                    nat.stats.dropped += 1
                    return
                nat.stats.hairpinned += 1
                self._fly(nat, translated, destination, data)
                return
            node = realm.nodes.get(destination[0])
            if node is not None:
                self._fly(node, source, destination, data)
                return
            if nat is None:
                self.stats.unroutable += 1
                return
            translated = None if nat._lose() else nat._outbound(source, destination)
            if translated is None:
                return
            source = translated
            realm = self._realms[nat.behind]

    def _fly(
        self, node: SimulatedHost | NATBox, source: Address, destination: Address, data: bytes
    ) -> None:
        rng = self._random
        if (self.loss and rng.random() < self.loss) or (
            self.max_payload is not None and len(data) > self.max_payload
        ):
            self.stats.lost += 1
            return
        delay = self.latency
        if self.jitter:
            delay += rng.uniform(0.0, self.jitter)
        if self.reorder and rng.random() < self.reorder:
            delay += max(self.latency, 0.001) * rng.uniform(1.0, 3.0)
        self.clock.callLater(delay, self._arrive, node, source, destination, data)

    def _arrive(
        self, node: SimulatedHost | NATBox, source: Address, destination: Address, data: bytes
    ) -> None:
        """Descend through the receiver's NATs, filtering now, to the host."""
        while isinstance(node, NATBox):
            inside = None if node._lose() else node._inbound(source, destination)
            if inside is None:
                return
            destination = inside
            found = self._realms[node].nodes.get(destination[0])
            if found is None:
                self.stats.unroutable += 1
                return
            node = found
        firewall = node.firewall
        if (
            firewall is not None
            and ":" in destination[0]
            and not firewall.admits(destination, source, self.clock.seconds())
        ):
            return
        node._deliver(data, source, destination)


def _check_ipv4(address: str) -> None:
    if not isIPAddress(address):
        raise ValueError(f"{address!r} is not an IPv4 address")


def _check_family(nat: NATBox | None, ipv6: bool, what: str) -> None:
    """A NAT of one family has nothing of the other behind it."""
    if nat is not None and nat.ipv6 != ipv6:
        family = "an IPv6 NAT (NAT66)" if ipv6 else "an IPv4 NAT"
        raise ValueError(f"{what} must be {family}, not {nat!r}")
