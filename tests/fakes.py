"""Small test doubles shared by the unit tests."""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IUDPTransport
from twisted.internet.protocol import DatagramProtocol
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


class Collector(DatagramProtocol):
    """A DatagramProtocol that records what it receives, and its start and stop."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []
        self.started = 0
        self.stopped = 0

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        self.started += 1

    def doStop(self) -> None:
        super().doStop()
        self.stopped += 1

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))
