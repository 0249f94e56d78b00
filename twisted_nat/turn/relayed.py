"""
The transport of a protocol whose socket is a relayed address
(L{Allocation.attach<twisted_nat.turn.Allocation.attach>}).
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IUDPTransport
from twisted.internet.protocol import AbstractDatagramProtocol
from zope.interface import implementer

from twisted_nat.address import Address


class Relay(Protocol):
    """What a L{RelayedTransport} needs of its allocation."""

    @property
    def relayed_address(self) -> Address: ...

    def send(self, data: bytes, peer: Address, dont_fragment: bool = False) -> None: ...

    def close(self) -> Deferred[None]: ...


def _follow(source: Deferred[None]) -> Deferred[None]:
    """A Deferred firing when C{source} does, leaving C{source}'s result in place."""
    follower: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        follower.callback(None)
        return result

    source.addBoth(fire)
    return follower


@implementer(IUDPTransport)
class RelayedTransport:
    """
    The transport of a protocol that uses a relayed address as its socket:
    writes become the allocation's C{send}, C{getHost} is the relayed
    address, closing it closes the allocation.
    """

    def __init__(self, allocation: Relay, protocol: AbstractDatagramProtocol) -> None:
        self.allocation = allocation
        self._protocol = protocol
        self._stopped: Deferred[None] | None = None

    def write(self, packet: bytes, addr: Address | None = None) -> None:
        if addr is None:
            raise ValueError("a relayed transport needs a destination for every datagram")
        self.allocation.send(packet, addr)

    def connect(self, host: str, port: int) -> None:
        raise RuntimeError("a relayed transport cannot be connected to one peer")

    def getHost(self) -> IPv4Address | IPv6Address:
        host, port = self.allocation.relayed_address
        if ":" in host:
            return IPv6Address("UDP", host, port)
        return IPv4Address("UDP", host, port)

    def stopListening(self) -> Deferred[None]:
        if self._stopped is None:
            self._stopped = self.allocation.close()
            self._protocol.doStop()
        return _follow(self._stopped)

    loseConnection = stopListening

    def setBroadcastAllowed(self, enabled: bool) -> None:
        if enabled:
            raise RuntimeError("a relay does not broadcast")

    def getBroadcastAllowed(self) -> bool:
        return False
