"""
Hosts of the simulated internet and their UDP ports.

A L{SimulatedHost} is the reactor its code runs on, as far as UDP and time
go; a L{SimulatedPort} is the transport its protocols see.  Both reach the
network through the narrow L{Network} interface, which
L{SimulatedInternet <twisted_nat.testing.SimulatedInternet>} provides.
"""

from __future__ import annotations

import errno
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError, InvalidAddressError, MessageLengthError
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IReactorTime,
    IReactorUDP,
    IUDPTransport,
)
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from zope.interface import implementer

from twisted_nat.address import Address
from twisted_nat.testing._firewall import Firewall
from twisted_nat.testing._nat import NATBox

WILDCARD = "0.0.0.0"
WILDCARD6 = "::"
EPHEMERAL_PORTS = range(32768, 61000)
"""Linux's default C{ip_local_port_range}: where port 0 binds land."""
MAX_UDP_PAYLOAD = 65507


@attrs.define
class NetworkStats:
    """
    What happened to every datagram sent on the simulated internet.

    NAT-level fates (filtered, expired mapping, hairpinning refused) are
    counted by each L{NATBox}; these are the path's and the hosts'.

    @ivar sent: datagrams handed to a port's C{write}.
    @ivar delivered: datagrams given to a protocol's C{datagramReceived}.
    @ivar lost: datagrams the path lost (the internet's C{loss} setting).
    @ivar unroutable: datagrams for an address no host or NAT owns.
    @ivar unreachable: datagrams that reached their host after its port had
        stopped listening, or for a port that never listened (a real host
        would answer with ICMP port unreachable, which UDP ignores).
    @ivar truncated: datagrams cut to the receiving port's C{maxPacketSize},
        as C{recvfrom} does.
    @ivar protocol_errors: exceptions raised by a protocol's
        C{datagramReceived}, logged and otherwise ignored, like the reactor.
    """

    sent: int = 0
    delivered: int = 0
    lost: int = 0
    unroutable: int = 0
    unreachable: int = 0
    truncated: int = 0
    protocol_errors: int = 0


class Network(Protocol):
    """
    What a host needs of the network it is on: the shared clock, the one
    seeded random generator, the counters, and a way to send.
    """

    clock: Clock
    stats: NetworkStats
    log: Logger
    _random: random.Random

    def _send(
        self, sender: SimulatedHost, source: Address, destination: Address, data: bytes
    ) -> None:
        """Carry C{data} from C{source} on C{sender} towards C{destination}."""


@implementer(IListeningPort, IUDPTransport)
class SimulatedPort:
    """
    A UDP port bound on a L{SimulatedHost}: the transport its protocol sees.

    It behaves as C{twisted.internet.udp.Port} does where a protocol can
    tell (errors for hostnames and oversized datagrams, C{getHost}, a
    second C{stopListening} doing nothing), with two differences: it has no
    C{socket} attribute, so code that reaches for the raw socket falls back
    to C{write}, and C{stopListening} releases the port at once rather than
    on the next reactor iteration.  Connected UDP is not simulated.
    """

    def __init__(
        self,
        host: SimulatedHost,
        port: int,
        protocol: AbstractDatagramProtocol,
        interface: str,
        maxPacketSize: int,
    ) -> None:
        self.host = host
        self.port = port
        self.protocol = protocol
        self.interface = interface
        self.maxPacketSize = maxPacketSize
        self.listening = False
        self._broadcast = False

    def __repr__(self) -> str:
        return f"<SimulatedPort {self.interface}:{self.port} {type(self.protocol).__name__}>"

    @property
    def ipv6(self) -> bool:
        """Whether this port is bound to IPv6 (only: as with C{IPV6_V6ONLY})."""
        return ":" in self.interface

    def startListening(self) -> None:
        """Bind, then connect the protocol, as C{listenUDP} does."""
        self.port = self.host._bind(self)
        self.listening = True
        self.protocol.makeConnection(self)

    def stopListening(self) -> Deferred[None]:
        if not self.listening:
            return defer.succeed(None)
        self.listening = False
        self.host._unbind(self)
        self.protocol.doStop()
        return defer.succeed(None)

    loseConnection = stopListening

    def write(self, packet: bytes, addr: Address | None = None) -> None:
        if not self.listening:
            raise OSError(errno.EBADF, "write on a port that has stopped listening")
        if addr is None:
            raise ValueError("an unconnected UDP port needs a destination for every datagram")
        if not isinstance(packet, bytes):
            raise TypeError(f"datagrams are bytes, not {type(packet).__name__}")
        host, port = addr
        if self.ipv6 and not isIPv6Address(host):
            raise InvalidAddressError(host, "write() only accepts IPv6 addresses here")
        if not self.ipv6 and not isIPAddress(host):
            raise InvalidAddressError(host, "write() only accepts IPv4 addresses here")
        if not 0 < port < 65536:
            raise ValueError(f"cannot send to port {port}")
        if len(packet) > MAX_UDP_PAYLOAD:
            raise MessageLengthError("message too long")
        if self.interface == WILDCARD6:
            source = self.host.addresses6[0]
        else:
            source = self.host.addresses[0] if self.interface == WILDCARD else self.interface
        self.host.internet._send(self.host, (source, self.port), (host, port), packet)

    def writeSequence(self, seq: Iterable[bytes], addr: Address) -> None:
        self.write(b"".join(seq), addr)

    def connect(self, host: str, port: int) -> None:
        raise NotImplementedError("connected UDP is not simulated")

    def getHost(self) -> IPv4Address | IPv6Address:
        if self.ipv6:
            return IPv6Address("UDP", self.interface, self.port)
        return IPv4Address("UDP", self.interface, self.port)

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self._broadcast = enabled

    def getBroadcastAllowed(self) -> bool:
        return self._broadcast

    def _receive(self, data: bytes, source: Address) -> None:
        internet = self.host.internet
        if len(data) > self.maxPacketSize:
            internet.stats.truncated += 1
            data = data[: self.maxPacketSize]
        internet.stats.delivered += 1
        try:
            self.protocol.datagramReceived(data, source)
        except Exception:
            internet.stats.protocol_errors += 1
            internet.log.failure(
                "Unhandled error in {protocol} receiving a datagram from {source}",
                protocol=self.protocol,
                source=source,
            )


@implementer(IReactorUDP, IReactorTime)
class SimulatedHost:
    """
    A machine on the simulated internet, and the reactor its code runs on:
    pass it wherever a protocol wants an C{IReactorUDP} or C{IReactorTime}
    (C{STUNClient(reactor=host)}, C{host.listenUDP(0, protocol)}).

    Its clock is the internet's, shared by every host, so one C{advance}
    moves the whole world.  Made by
    L{SimulatedInternet.add_host <twisted_nat.testing.SimulatedInternet.add_host>}.

    @ivar internet: the network the host is on.
    @ivar addresses: its IPv4 addresses, in the address space of the NAT it
        is behind (or the public internet); datagrams from a port bound to
        every address leave from the first.
    @ivar behind: the NAT it is behind, or None on the public internet.
    @ivar addresses6: its IPv6 addresses, global or behind C{behind6}
        (none: a host without IPv6, where binding C{::} fails); datagrams
        from a port bound to C{::} leave from the first.
    @ivar firewall: the stateful firewall in front of its IPv6 addresses,
        or None for none.
    @ivar behind6: the NAT66 its IPv6 addresses are behind, or None when
        they are global.
    """

    def __init__(
        self,
        internet: Network,
        addresses: tuple[str, ...],
        behind: NATBox | None,
        addresses6: tuple[str, ...] = (),
        firewall: Firewall | None = None,
        behind6: NATBox | None = None,
    ) -> None:
        self.internet = internet
        self.addresses = addresses
        self.behind = behind
        self.addresses6 = addresses6
        self.firewall = firewall
        self.behind6 = behind6
        self._ports: dict[Address, SimulatedPort] = {}

    def __repr__(self) -> str:
        where = f" behind {self.behind.public_address}" if self.behind is not None else ""
        return f"<SimulatedHost {', '.join(self.addresses)}{where}>"

    # --- IReactorUDP ---

    def listenUDP(
        self,
        port: int,
        protocol: AbstractDatagramProtocol,
        interface: str = "",
        maxPacketSize: int = 8192,
    ) -> SimulatedPort:
        """
        Bind C{port} (0 for a free ephemeral one) on C{interface} (one of
        L{addresses}, or C{""} / C{"0.0.0.0"} for all of them; one of
        L{addresses6}, or C{"::"} for all of them, for IPv6).

        @raise CannotListenError: the port is taken on that address, or the
            address is not this host's, as a real bind would refuse.
        """
        listening = SimulatedPort(self, port, protocol, interface or WILDCARD, maxPacketSize)
        listening.startListening()
        return listening

    def route_source(self, destination: str) -> str:
        """
        The address a port bound to every address sends from: what the
        operating system's routing table answers for a real host.  Behaviour
        discovery asks this to tell "no NAT" from "NAT" (see
        L{twisted_nat.nat.route_source}).
        """
        return self.addresses6[0] if ":" in destination else self.addresses[0]

    def ports(self) -> list[SimulatedPort]:
        """The ports listening now, for assertions about what is left bound."""
        return sorted(self._ports.values(), key=lambda p: (p.port, p.interface))

    def _deliver(self, data: bytes, source: Address, destination: Address) -> None:
        """The end of a path: hand the datagram to the port bound to C{destination}."""
        wildcard = WILDCARD6 if ":" in destination[0] else WILDCARD
        listening = self._ports.get(destination) or self._ports.get((wildcard, destination[1]))
        if listening is None:
            self.internet.stats.unreachable += 1
            return
        listening._receive(data, source)

    def _bind(self, listening: SimulatedPort) -> int:
        interface, port = listening.interface, listening.port
        mine = self.addresses6 if ":" in interface else self.addresses
        if interface == WILDCARD6 and not mine:
            raise CannotListenError(
                interface, port, OSError(errno.EADDRNOTAVAIL, "this host has no IPv6")
            )
        if interface not in (WILDCARD, WILDCARD6) and interface not in mine:
            raise CannotListenError(
                interface, port, OSError(errno.EADDRNOTAVAIL, "not an address of this host")
            )
        if not 0 <= port < 65536:
            raise OverflowError("bind(): port must be 0-65535.")
        if port == 0:
            port = self._ephemeral(interface)
        elif not self._free(interface, port):
            raise CannotListenError(interface, port, OSError(errno.EADDRINUSE, "in use"))
        self._ports[(interface, port)] = listening
        return port

    def _unbind(self, listening: SimulatedPort) -> None:
        self._ports.pop((listening.interface, listening.port), None)

    def _free(self, interface: str, port: int) -> bool:
        """Whether C{port} is free on C{interface}: the families' ports are apart."""
        ipv6 = ":" in interface
        wildcard = WILDCARD6 if ipv6 else WILDCARD
        if interface == wildcard:
            return all(p != port for i, p in self._ports if (":" in i) == ipv6)
        return (interface, port) not in self._ports and (wildcard, port) not in self._ports

    def _ephemeral(self, interface: str) -> int:
        rng = self.internet._random
        for _ in range(64):
            port = rng.choice(EPHEMERAL_PORTS)
            if self._free(interface, port):
                return port
        for port in EPHEMERAL_PORTS:
            if self._free(interface, port):
                return port
        raise CannotListenError(interface, 0, OSError(errno.EADDRINUSE, "no ephemeral port left"))

    # --- IReactorTime, from the shared clock ---

    def seconds(self) -> float:
        return self.internet.clock.seconds()

    def callLater(
        self, delay: float, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> IDelayedCall:
        return self.internet.clock.callLater(delay, callable, *args, **kwargs)

    def getDelayedCalls(self) -> Sequence[IDelayedCall]:
        return self.internet.clock.getDelayedCalls()
