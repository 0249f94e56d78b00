"""
The NAT boxes of the simulated internet.

A L{NATBox} is configured in the terms of RFC 4787 and RFC 5780, the same
terms behaviour discovery reports in, so a test can say which NAT it wants
instead of naming a vendor: how a mapping is chosen (L{MappingBehavior}),
which inbound datagrams it admits (L{FilteringBehavior}), and which public
port it gets (L{PortAllocation}).  The four classic RFC 3489 types are
shorthands for four of the nine combinations (L{CLASSIC_NAT_TYPES}).

These enums configure the simulator.  They are deliberately separate from
the ones behaviour discovery returns as results: a test states the NAT it
builds with these and asserts on what discovery reports with those, so one
cannot silently stand in for the other.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Final, Literal, TypeAlias

import attrs
from twisted.internet.interfaces import IReactorTime

from twisted_nat.address import Address


class MappingBehavior(enum.Enum):
    """
    When a NAT reuses a mapping (RFC 4787 section 4.1).

    The mapping of an inside endpoint is shared by every destination
    (C{ENDPOINT_INDEPENDENT}), by every port of one destination address
    (C{ADDRESS_DEPENDENT}), or by nothing but one destination endpoint
    (C{ADDRESS_AND_PORT_DEPENDENT}): only the first lets a peer reach the
    address a STUN server reported.
    """

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class FilteringBehavior(enum.Enum):
    """
    Which inbound datagrams a mapping admits (RFC 4787 section 5).

    Anyone (C{ENDPOINT_INDEPENDENT}), any port of an address the inside
    endpoint has sent to through this mapping (C{ADDRESS_DEPENDENT}), or
    only the exact endpoints it has sent to (C{ADDRESS_AND_PORT_DEPENDENT}):
    the last is why both peers must punch.
    """

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"


class PortAllocation(enum.Enum):
    """
    Which public port a new mapping gets (RFC 4787 section 4.2).

    C{PRESERVING} keeps the inside port when it is free, else takes the
    next free one, as Linux does; C{SEQUENTIAL} counts up through the pool,
    which is what port prediction exploits; C{RANDOM} picks with the
    simulation's seeded generator, which defeats prediction but still
    reproduces run after run.
    """

    PRESERVING = "preserving"
    SEQUENTIAL = "sequential"
    RANDOM = "random"


ClassicNATType: TypeAlias = Literal[
    "full-cone", "restricted-cone", "port-restricted-cone", "symmetric"
]

CLASSIC_NAT_TYPES: Final[Mapping[str, tuple[MappingBehavior, FilteringBehavior]]] = (
    MappingProxyType(
        {
            "full-cone": (
                MappingBehavior.ENDPOINT_INDEPENDENT,
                FilteringBehavior.ENDPOINT_INDEPENDENT,
            ),
            "restricted-cone": (
                MappingBehavior.ENDPOINT_INDEPENDENT,
                FilteringBehavior.ADDRESS_DEPENDENT,
            ),
            "port-restricted-cone": (
                MappingBehavior.ENDPOINT_INDEPENDENT,
                FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
            ),
            "symmetric": (
                MappingBehavior.ADDRESS_AND_PORT_DEPENDENT,
                FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
            ),
        }
    )
)
"""
RFC 3489's names for four combinations of mapping and filtering, the names
most peer-to-peer folklore still uses.
"""


@attrs.define
class NATStats:
    """
    What a NAT did with the datagrams that reached it.

    @ivar translated: datagrams rewritten and passed on, in either direction.
    @ivar filtered: inbound datagrams for a live mapping that its filtering
        refused.
    @ivar expired: mappings removed after C{binding_timeout} of inactivity.
    @ivar dropped: datagrams with nowhere to go: inbound for a public port
        without a mapping, hairpinned with hairpinning off, or outbound when
        the port pool is exhausted.
    @ivar hairpinned: datagrams from the inside to the NAT's own public
        address that were turned back in (they count as translated too, on
        the way out and, unless filtered, on the way in).
    @ivar lost: datagrams this NAT lost on purpose (its C{loss} setting).
    """

    translated: int = 0
    filtered: int = 0
    expired: int = 0
    dropped: int = 0
    hairpinned: int = 0
    lost: int = 0


@attrs.frozen
class NATMapping:
    """
    A snapshot of one live mapping, for assertions.

    @ivar internal: the inside endpoint the mapping belongs to.
    @ivar external: the public endpoint the outside sees.
    @ivar remote_host: the destination address the mapping is keyed on, or
        None if its NAT's mapping is endpoint-independent.
    @ivar remote_port: the destination port the mapping is keyed on, or None
        unless its NAT's mapping is address-and-port-dependent.
    @ivar contacted: every remote endpoint the inside has sent to through
        this mapping: what filtering compares inbound sources with.
    @ivar expires_at: the simulated time at which the mapping lapses unless
        refreshed.
    """

    internal: Address
    external: Address
    remote_host: str | None
    remote_port: int | None
    contacted: frozenset[Address]
    expires_at: float


@attrs.define
class _Binding:
    """The mutable state behind a L{NATMapping}."""

    internal: Address
    external_port: int
    remote_host: str | None
    remote_port: int | None
    last_activity: float
    contacted: set[Address] = attrs.Factory(set)


class NATBox:
    """
    A NAT between an inside realm and the realm it is attached to (the
    public internet, or the inside of another NAT), for one address family:
    IPv4, or IPv6 (NAT66) when its public address is one.  Nothing in its
    mapping, filtering or allocation depends on the family.

    Made by L{SimulatedInternet.add_nat <twisted_nat.testing.SimulatedInternet.add_nat>};
    its settings are public attributes and may be changed mid-test (a NAT
    that starts hairpinning, or shortens its timeout) since every datagram
    reads them afresh.

    Bindings expire lazily: a mapping lapses once C{binding_timeout} passes
    without activity and is removed the next time the NAT handles a
    datagram or is asked for L{mappings}, so a NAT puts no timers on the
    clock that a test would have to step through or account for.

    @ivar lose_inbound: a test hook, None by default: called with the
        source and the public destination of every datagram that reaches
        the NAT from outside, before filtering; when it returns True the
        NAT loses that datagram (counted in C{stats.lost}), so a test can
        lose exactly the datagrams it means to.
    """

    def __init__(
        self,
        public_address: str,
        mapping: MappingBehavior,
        filtering: FilteringBehavior,
        allocation: PortAllocation,
        hairpinning: bool,
        binding_timeout: float,
        inbound_refresh: bool,
        loss: float,
        ports: range,
        behind: NATBox | None,
        reactor: IReactorTime,
        rng: random.Random,
    ) -> None:
        if binding_timeout <= 0:
            raise ValueError("binding_timeout must be positive")
        if not 0.0 <= loss <= 1.0:
            raise ValueError("loss is a probability, between 0 and 1")
        if not ports or ports.step != 1 or ports.start < 1 or ports.stop > 65536:
            raise ValueError("ports must be a non-empty range of port numbers, step 1")
        self.public_address = public_address
        self.mapping = mapping
        self.filtering = filtering
        self.allocation = allocation
        self.hairpinning = hairpinning
        self.binding_timeout = binding_timeout
        self.inbound_refresh = inbound_refresh
        self.loss = loss
        self.ports = ports
        self.behind = behind
        self.stats = NATStats()
        self.lose_inbound: Callable[[Address, Address], bool] | None = None
        self._reactor = reactor
        self._rng = rng
        self._bindings: dict[tuple[str | int, ...], _Binding] = {}
        self._by_port: dict[int, _Binding] = {}
        self._next_port = ports.start

    @property
    def ipv6(self) -> bool:
        """Whether this is a NAT66: it translates IPv6, and only IPv6."""
        return ":" in self.public_address

    def __repr__(self) -> str:
        return (
            f"<NATBox {self.public_address} mapping={self.mapping.value}"
            f" filtering={self.filtering.value}>"
        )

    def mappings(self) -> list[NATMapping]:
        """
        The live mappings, ordered by inside endpoint then public port: a
        snapshot, so a test can compare before and after.
        """
        self._expire(self._reactor.seconds())
        return [
            NATMapping(
                internal=b.internal,
                external=(self.public_address, b.external_port),
                remote_host=b.remote_host,
                remote_port=b.remote_port,
                contacted=frozenset(b.contacted),
                expires_at=b.last_activity + self.binding_timeout,
            )
            for b in sorted(self._bindings.values(), key=lambda b: (b.internal, b.external_port))
        ]

    def flush(self) -> int:
        """
        Forget every binding at once, as C{conntrack -F} does to a Linux NAT
        (or a reboot to a home router); returns how many there were.
        """
        flushed = len(self._bindings)
        self._bindings.clear()
        self._by_port.clear()
        self.stats.expired += flushed
        return flushed

    # --- what the network calls ---

    def _lose(self) -> bool:
        """Whether this NAT loses the datagram passing through it now."""
        if self.loss and self._rng.random() < self.loss:
            self.stats.lost += 1
            return True
        return False

    def _outbound(self, source: Address, destination: Address) -> Address | None:
        """
        Translate a datagram leaving the inside: the public endpoint it now
        comes from, or None if the NAT has no port left for it.  Outbound
        traffic always refreshes its mapping (RFC 4787 REQ-6).
        """
        now = self._reactor.seconds()
        self._expire(now)
        key = self._key(source, destination)
        binding = self._bindings.get(key)
        if binding is None:
            port = self._allocate(source[1])
            if port is None:
                self.stats.dropped += 1
                return None
            remote_host = destination[0] if len(key) > 2 else None
            remote_port = destination[1] if len(key) > 3 else None
            binding = _Binding(source, port, remote_host, remote_port, now)
            self._bindings[key] = binding
            self._by_port[port] = binding
        binding.contacted.add(destination)
        binding.last_activity = now
        self.stats.translated += 1
        return (self.public_address, binding.external_port)

    def _inbound(self, source: Address, destination: Address) -> Address | None:
        """
        Translate a datagram arriving for C{destination} on the public side:
        the inside endpoint it goes to, or None if there is no mapping or
        the filter refuses C{source}.  An admitted datagram refreshes the
        mapping when C{inbound_refresh} is set, as most NATs do; clearing it
        models those that only count outbound traffic, which is what
        keep-alive intervals must be chosen for.
        """
        if self.lose_inbound is not None and self.lose_inbound(source, destination):
            self.stats.lost += 1
            return None
        now = self._reactor.seconds()
        self._expire(now)
        binding = self._by_port.get(destination[1])
        if binding is None:
            self.stats.dropped += 1
            return None
        if not self._admits(binding, source):
            self.stats.filtered += 1
            return None
        if self.inbound_refresh:
            binding.last_activity = now
        self.stats.translated += 1
        return binding.internal

    # --- the behaviours ---

    def _key(self, source: Address, destination: Address) -> tuple[str | int, ...]:
        if self.mapping is MappingBehavior.ENDPOINT_INDEPENDENT:
            return source
        if self.mapping is MappingBehavior.ADDRESS_DEPENDENT:
            return (*source, destination[0])
        return (*source, *destination)

    def _admits(self, binding: _Binding, source: Address) -> bool:
        if self.filtering is FilteringBehavior.ENDPOINT_INDEPENDENT:
            return True
        if self.filtering is FilteringBehavior.ADDRESS_DEPENDENT:
            return any(host == source[0] for host, _ in binding.contacted)
        return source in binding.contacted

    def _allocate(self, inside_port: int) -> int | None:
        """A free public port per the allocation policy, or None if none is left."""
        if len(self._by_port) >= len(self.ports):
            return None
        if self.allocation is PortAllocation.PRESERVING:
            start = inside_port if inside_port in self.ports else self.ports.start
        elif self.allocation is PortAllocation.SEQUENTIAL:
            start = self._next_port
        else:
            # Sample a few times, then scan from a random point, so a nearly
            # full pool still ends, and still reproduces with the seed.
            for _ in range(16):
                port = self._rng.choice(self.ports)
                if port not in self._by_port:
                    return port
            start = self._rng.choice(self.ports)
        port = next(p for p in self._cycle(start) if p not in self._by_port)
        if self.allocation is PortAllocation.SEQUENTIAL:
            self._next_port = port + 1 if port + 1 < self.ports.stop else self.ports.start
        return port

    def _cycle(self, start: int) -> Iterator[int]:
        """The pool from C{start} upwards, wrapping round to its beginning."""
        yield from range(start, self.ports.stop)
        yield from range(self.ports.start, start)

    def _expire(self, now: float) -> None:
        lapsed = [
            key
            for key, b in self._bindings.items()
            if now >= b.last_activity + self.binding_timeout
        ]
        for key in lapsed:
            binding = self._bindings.pop(key)
            del self._by_port[binding.external_port]
            self.stats.expired += 1
