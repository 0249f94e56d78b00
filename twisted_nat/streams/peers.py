"""
Streams for every connection of a service.

L{QuicRouter} is the one protocol for QUIC (first bytes 64-127 and 192-255, RFC 9443)
on the shared socket and every other base.  It finds the peer connection
by the path a datagram came by, through the data router's own table of
paths, and hands the datagram to that connection's L{QuicLink}; a
datagram from anywhere else is dropped and counted, so a stranger costs
us nothing.  On the shared socket 64-79 is TURN's ChannelData when it
comes from a TURN server of ours (L{twisted_nat.turn.TURNClient.is_server}
claims it first), and QUIC from anyone else.

L{PeerStreams} watches the service's connections and gives each new one
a L{QuicLink}: the peer that offered is the QUIC client.
"""

from __future__ import annotations

from weakref import WeakSet

from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from twisted_nat.address import Address
from twisted_nat.bases import SHARED, Base
from twisted_nat.connection import AppDataRouter, PeerConnection
from twisted_nat.limits import DropLog
from twisted_nat.mux import QUIC_FIRST_BYTES, UDPMultiplexer
from twisted_nat.streams.driver import QuicStats
from twisted_nat.streams.link import QuicLink
from twisted_nat.streams.settings import DEFAULT_STREAM_SETTINGS, StreamSettings
from twisted_nat.streams.stream import PeerAddress
from twisted_nat.trust.keys import Identity


class QuicRouter(DatagramProtocol):
    """QUIC datagrams on every base, to the link of the connection whose path they came by."""

    log = Logger()
    noisy = False

    def __init__(self, data: AppDataRouter, stats: QuicStats, drops: DropLog) -> None:
        self._data = data
        self._stats = stats
        self._drops = drops
        data.bases.listen(self.received, _route)

    def attach(self, mux: UDPMultiplexer) -> None:
        """Carry QUIC on the shared socket of C{mux}."""
        self._data.bases.share(mux)
        _route(mux, self)

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        self.received(datagram, addr, SHARED)

    def received(self, datagram: bytes, addr: Address, base: Base) -> None:
        connection = self._data.at(base, addr)
        link = connection.streams if connection is not None else None
        if not isinstance(link, QuicLink):
            self._stats.dropped_unknown_peer += 1
            self.log.debug("dropped QUIC from {addr}: no connection there", addr=addr)
            return
        link.datagram_received(datagram)


def _route(mux: UDPMultiplexer, protocol: DatagramProtocol) -> object:
    return mux.add_range(protocol, QUIC_FIRST_BYTES)


class PeerStreams:
    """
    Gives every connection of a service its QUIC streams.

    @param factory: builds the protocol of each stream a peer opens
        (C{buildProtocol} gets a L{PeerAddress}); streams are refused
        without one, or when it returns None.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        identity: Identity,
        data: AppDataRouter,
        factory: IProtocolFactory | None = None,
        settings: StreamSettings = DEFAULT_STREAM_SETTINGS,
    ) -> None:
        self.stats = QuicStats()
        self.settings = settings
        self._factory = factory
        self._clients: WeakSet[QuicLink] = WeakSet()
        """Our links as the QUIC client, to connect if a factory comes later."""
        self._reactor = reactor
        self._identity = identity
        self.drops = DropLog(self.log, reactor)
        self.router = QuicRouter(data, self.stats, self.drops)

    @property
    def factory(self) -> IProtocolFactory | None:
        return self._factory

    @factory.setter
    def factory(self, factory: IProtocolFactory | None) -> None:
        """A factory set late: eager links connect now, so that peers may open streams."""
        self._factory = factory
        if factory is not None and self.settings.eager:
            for link in list(self._clients):
                link.connect()

    def connected(self, connection: PeerConnection, offerer: bool) -> None:
        """
        A punch made or rebound C{connection}: it gets its streams once.
        With L{StreamSettings.eager}, the offerer connects QUIC at once if
        it takes streams (a factory) or QUIC datagrams, so that the peer may
        open the first stream; without a factory it would refuse them anyway.
        """
        if connection.streams is None:
            link = self.link(connection, client=offerer)
            if offerer:
                self._clients.add(link)
                if self.settings.eager and (self._factory is not None or self.settings.datagrams):
                    # After the punch's caller has its connection: the
                    # handshake's CPU is not the connection's set-up.
                    self._reactor.callLater(0, link.connect)

    def link(self, connection: PeerConnection, client: bool) -> QuicLink:
        """Streams on C{connection}; we are the QUIC client if C{client}."""
        return QuicLink(
            self._reactor,
            connection,
            self._identity,
            client,
            self.settings,
            self._accept,
            self.stats,
            self.drops,
        )

    def _accept(self, address: PeerAddress) -> IProtocol | None:
        factory = self._factory
        if factory is None:
            return None
        return factory.buildProtocol(address)
