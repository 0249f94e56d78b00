"""Small test doubles shared by the unit tests."""

from __future__ import annotations

import attrs
from twisted.internet.interfaces import IUDPTransport
from twisted.internet.address import IPv4Address
from zope.interface import implementer


@implementer(IUDPTransport)
class RecordingUDPTransport:
    """A UDP transport that records what is written and claims a bound address."""

    def __init__(self, host: str = "0.0.0.0", port: int = 40000) -> None:
        self.written: list[tuple[bytes, tuple[str, int]]] = []
        self.host = IPv4Address("UDP", host, port)
        self.stopped = False

    def write(self, packet: bytes, addr: tuple[str, int] | None = None) -> None:
        assert addr is not None
        self.written.append((packet, addr))

    def connect(self, host: str, port: int) -> None:
        raise RuntimeError("not used")

    def getHost(self) -> IPv4Address:
        return self.host

    def stopListening(self) -> None:
        self.stopped = True

    def setBroadcastAllowed(self, enabled: bool) -> None:
        pass

    def getBroadcastAllowed(self) -> bool:
        return False


@attrs.define
class Collector:
    """A minimal DatagramProtocol stand-in that records what it receives."""

    received: list[tuple[bytes, tuple[str, int]]] = attrs.Factory(list)
    transport: object = None
    started: int = 0
    stopped: int = 0

    def makeConnection(self, transport: object) -> None:
        self.transport = transport
        self.started += 1

    def doStop(self) -> None:
        self.stopped += 1

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))
