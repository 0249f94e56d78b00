"""
One UDP socket, many protocols.

A NAT binding belongs to one local port, so STUN discovery, hole punching,
keep-alive, TURN and the application's own datagrams must all use the same
socket.  L{UDPMultiplexer} is the only protocol that socket ever has: it
looks at each datagram once and hands it to exactly one sub-protocol, the
way RFC 7983 (and RFC 9443) prescribe for media ports:

    first byte 0-3    STUN; routed further by method and class, once the
                      magic cookie confirms it
    first byte 64-79  TURN ChannelData from a TURN server we use, QUIC
                      (RFC 9443) from anyone else
    first byte 64-127 QUIC short header, 192-255 long header (RFC 9443)
    other ranges      whatever a sub-protocol claims with L{add_range}

A range may be claimed twice: once for the sources a predicate names
(C{add_range(..., sources=...)}: TURN claims 64-79 from its servers only)
and once for everyone else.  The source-specific claim is asked first.

Each sub-protocol is an ordinary C{DatagramProtocol}, connected to a
L{SubTransport} whose C{write} goes out through the shared socket.  Nothing
else decides where a datagram goes, and no sub-protocol touches the socket.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.internet import udp
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort, IUDPTransport
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from twisted_nat.address import Address
from twisted_nat.stun.attributes import MAGIC_COOKIE_BYTES
from twisted_nat.stun.message import MessageClass, split_message_type

STUN_FIRST_BYTES = range(0, 4)
CHANNEL_DATA_FIRST_BYTES = range(64, 80)
QUIC_FIRST_BYTES = (*range(64, 128), *range(192, 256))
"""QUIC's fixed bit is set: 01xxxxxx is a short header, 11xxxxxx a long one (RFC 9443)."""

Sources = Callable[[Address], bool]

CHECKED_ADDRESSES = 1024
"""Addresses the port has taken, remembered to send to directly (all forgotten when full)."""

_TYPE = struct.Struct("!H")


@attrs.define
class MultiplexerStats:
    """Counters of what arrived and where it went (or why it was dropped)."""

    received: int = 0
    delivered: int = 0
    dropped_unclaimed: int = 0


@implementer(IUDPTransport)
class SubTransport:
    """
    The transport a sub-protocol sees: writes go out through the shared
    socket; closing it detaches only this sub-protocol.
    """

    def __init__(self, mux: UDPMultiplexer, protocol: AbstractDatagramProtocol) -> None:
        self._mux = mux
        self._protocol = protocol

    def write(self, packet: bytes, addr: Address | None = None) -> None:
        if addr is None:
            raise ValueError("a shared UDP socket needs a destination for every datagram")
        self._mux.write(packet, addr)

    def connect(self, host: str, port: int) -> None:
        raise RuntimeError("a shared UDP socket cannot be connected to one peer")

    def getHost(self) -> IPv4Address | IPv6Address:
        return self._mux.getHost()

    def stopListening(self) -> None:
        self._mux.remove(self._protocol)

    loseConnection = stopListening

    def setBroadcastAllowed(self, enabled: bool) -> None:
        self._mux.require_transport().setBroadcastAllowed(enabled)

    def getBroadcastAllowed(self) -> bool:
        return bool(self._mux.require_transport().getBroadcastAllowed())


class UDPMultiplexer(AbstractDatagramProtocol):
    """
    The protocol of the shared socket: demultiplexes by first byte and, for
    STUN, by magic cookie, method and class.

    STUN messages without a handler for their method and class, and
    datagrams in a range nobody claimed, are dropped and counted.  RFC 3489
    messages (no magic cookie) go to the handler registered with
    C{rfc3489=True}, if any: only a server wants them.
    """

    log = Logger()
    noisy = False

    def __init__(self) -> None:
        self.stats = MultiplexerStats()
        self.transport: IUDPTransport | None = None
        self._ranges: list[AbstractDatagramProtocol | None] = [None] * 256
        self._sourced: list[tuple[Sources, AbstractDatagramProtocol] | None] = [None] * 256
        self._stun: dict[tuple[int, int], AbstractDatagramProtocol] = {}
        self._rfc3489: AbstractDatagramProtocol | None = None
        self._protocols: list[AbstractDatagramProtocol] = []
        self._sendto: Callable[[bytes, Address], object] | None = None
        self._checked: set[Address] = set()

    # --- the shared socket ---

    def makeConnection(self, transport: IUDPTransport) -> None:
        self.transport = transport
        sock = getattr(transport, "socket", None)
        if isinstance(transport, udp.Port) and isinstance(sock, socket.socket):
            self._sendto = sock.sendto
        self.doStart()

    def require_transport(self) -> IUDPTransport:
        if self.transport is None:
            raise RuntimeError("the multiplexer is not listening on a socket yet")
        return self.transport

    def write(self, packet: bytes, addr: Address) -> None:
        """
        Send C{packet} to C{addr}.  The port's own C{write} checks the
        address (an IP address, of the socket's family) every time; once it
        has taken an address, datagrams to it go to the socket directly,
        and any error is left to the port's C{write} to judge and raise.
        """
        sendto = self._sendto
        if sendto is not None and addr in self._checked:
            try:
                sendto(packet, addr)
                return
            except OSError:
                pass
        self.require_transport().write(packet, addr)
        if sendto is not None:
            if len(self._checked) >= CHECKED_ADDRESSES:
                self._checked.clear()
            self._checked.add(addr)

    def getHost(self) -> IPv4Address | IPv6Address:
        return self.require_transport().getHost()

    def doStop(self) -> None:
        for protocol in list(self._protocols):
            self.remove(protocol)
        super().doStop()
        self.transport = None
        self._sendto = None
        self._checked.clear()

    # --- registration ---

    def add_stun(
        self,
        protocol: AbstractDatagramProtocol,
        methods: Iterable[int],
        classes: Iterable[MessageClass] = tuple(MessageClass),
        rfc3489: bool = False,
    ) -> SubTransport:
        """Route STUN messages of these methods and classes to C{protocol}."""
        keys = [(m, c) for m in methods for c in classes]
        for key in keys:
            if key in self._stun:
                raise ValueError(f"STUN method {key[0]:#x} class {key[1]} already routed")
        if rfc3489 and self._rfc3489 is not None:
            raise ValueError("RFC 3489 messages already routed")
        for key in keys:
            self._stun[key] = protocol
        if rfc3489:
            self._rfc3489 = protocol
        return self._attach(protocol)

    def add_range(
        self,
        protocol: AbstractDatagramProtocol,
        first_bytes: Iterable[int],
        sources: Sources | None = None,
    ) -> SubTransport:
        """
        Route datagrams whose first byte is in C{first_bytes} to C{protocol}:
        all of them, or with C{sources}, only those from an address it
        says yes to (asked before the claim for everyone else).
        """
        wanted = list(first_bytes)
        table: list[Any] = self._ranges if sources is None else self._sourced
        for byte in wanted:
            if byte in STUN_FIRST_BYTES:
                raise ValueError("first bytes 0-3 are STUN's; use add_stun")
            if table[byte] is not None:
                raise ValueError(f"first byte {byte} already routed")
        for byte in wanted:
            table[byte] = protocol if sources is None else (sources, protocol)
        return self._attach(protocol)

    def _attach(self, protocol: AbstractDatagramProtocol) -> SubTransport:
        transport = SubTransport(self, protocol)
        if protocol not in self._protocols:
            self._protocols.append(protocol)
            protocol.makeConnection(transport)
        return transport

    def remove(self, protocol: AbstractDatagramProtocol) -> None:
        """Detach C{protocol} from every route; it gets C{doStop}."""
        if protocol not in self._protocols:
            return
        self._protocols.remove(protocol)
        self._stun = {k: p for k, p in self._stun.items() if p is not protocol}
        self._ranges = [None if p is protocol else p for p in self._ranges]
        self._sourced = [None if c is not None and c[1] is protocol else c for c in self._sourced]
        if self._rfc3489 is protocol:
            self._rfc3489 = None
        protocol.doStop()

    # --- dispatch ---

    def route(self, data: bytes, addr: Address | None = None) -> AbstractDatagramProtocol | None:
        """The sub-protocol that should get C{data} from C{addr}, or None."""
        if not data:
            return None
        first = data[0]
        if first < 4:
            if len(data) < 20:
                return None
            if data[4:8] != MAGIC_COOKIE_BYTES:
                return self._rfc3489
            method, klass = split_message_type(_TYPE.unpack_from(data)[0])
            return self._stun.get((method, klass))
        sourced = self._sourced[first]
        if sourced is not None and addr is not None and sourced[0](addr):
            return sourced[1]
        return self._ranges[first]

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        self.stats.received += 1
        protocol = self.route(datagram, addr)
        if protocol is None:
            self.stats.dropped_unclaimed += 1
            self.log.debug(
                "dropped unclaimed datagram of {size} bytes from {addr}",
                size=len(datagram),
                addr=addr,
            )
            return
        self.stats.delivered += 1
        protocol.datagramReceived(datagram, addr)


def listening_port_host(port: IListeningPort) -> Address:
    """The (host, port) a listening UDP port is bound to."""
    host = port.getHost()
    return (host.host, host.port)  # type: ignore[attr-defined]
