"""
The router of application frames, and where connections are imported from.

L{AppDataRouter} is the one protocol for application frames on every base
(L{twisted_nat.bases}): it finds the connection by the sender's address
and the base it arrived on; the connection decrypts the frame, checks the
replay window, and hands the payload on.  Several connections to several
peers share the socket this way.  The connection itself is
L{twisted_nat.peerconnection.PeerConnection}, importable from here too.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from twisted_nat import control
from twisted_nat.address import Address
from twisted_nat.bases import SHARED, Base, BaseRegistry
from twisted_nat.ciphers import SHARED as SHARED_CIPHERS
from twisted_nat.ciphers import CipherCache
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.peerconnection import (
    ConnectionClosed,
    PathKey,
    PeerConnection,
    RouterStats,
    SequenceExhausted,
    StreamOpener,
)

__all__ = [
    "AppDataRouter",
    "ConnectionClosed",
    "PathKey",
    "PeerConnection",
    "RouterStats",
    "SequenceExhausted",
    "StreamOpener",
]


class AppDataRouter(DatagramProtocol):
    """
    The protocol for application frames (first byte 4) on the shared
    socket and every other base.

    @param bases: the registry of bases to carry frames on; one of its own
        when not given.
    @param ciphers: where its connections keep their AEAD objects; the
        process's L{twisted_nat.ciphers.SHARED} cache when not given.
    """

    log = Logger()
    noisy = False

    def __init__(
        self, bases: BaseRegistry | None = None, ciphers: CipherCache | None = None
    ) -> None:
        self.stats = RouterStats()
        self.ciphers = ciphers if ciphers is not None else SHARED_CIPHERS
        """The AEAD objects of the connections that carried data lately."""
        self.bases = bases if bases is not None else BaseRegistry()
        self._connections: dict[PathKey, PeerConnection] = {}
        self.bases.listen(self.received, _route)

    def attach(self, mux: UDPMultiplexer) -> None:
        """Carry frames on the shared socket of C{mux}."""
        self.bases.share(mux)
        _route(mux, self)

    def add(self, connection: PeerConnection) -> None:
        self._connections[connection.path] = connection

    def remove(self, connection: PeerConnection) -> None:
        if self._connections.get(connection.path) is connection:
            del self._connections[connection.path]

    def connections(self) -> list[PeerConnection]:
        return list(self._connections.values())

    def at(self, base: Base, address: Address) -> PeerConnection | None:
        """The connection whose path is C{address} from C{base}, if any."""
        return self._connections.get((base, address))

    def send(self, frame: bytes, address: Address, base: Base = SHARED) -> None:
        """
        Send a frame on a base.  A relay that refuses (its allocation is
        gone) loses the datagram, as the network may: keep-alive notices.
        """
        if base not in self.bases:
            raise ConnectionClosed(f"no socket to send on ({base} closed)")
        self.bases.send(frame, address, base)

    def getHost(self) -> Any:
        assert self.transport is not None
        return self.transport.getHost()

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        self.received(datagram, addr, SHARED)

    def received(self, datagram: bytes, addr: Address, base: Base) -> None:
        """An application frame that arrived on C{base}."""
        self.stats.received += 1
        connection = self._connections.get((base, addr))
        if connection is None:
            self.stats.dropped_unknown_peer += 1
            self.log.debug("dropped data from {addr}, no connection", addr=addr)
            return
        connection.frame_received(datagram)

    def doStop(self) -> None:
        for connection in list(self._connections.values()):
            connection.close()
        super().doStop()


def _route(mux: UDPMultiplexer, protocol: DatagramProtocol) -> object:
    return mux.add_range(protocol, [control.APP_DATA])
