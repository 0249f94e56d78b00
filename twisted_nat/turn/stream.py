"""
TURN over a stream to the server: TCP or TLS (RFC 8656 12.5).

The same pieces as on UDP run on a private multiplexer fed by a
L{StreamFramer}, so the L{TURNClient} cannot tell the difference; only the
framing (ChannelData padded to 4 bytes) and the retransmissions (none: the
stream is reliable, RFC 8489 6.2.2) change.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
    IUDPTransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_nat.address import Address, format_address
from twisted_nat.errors import ChannelDataDecodeError, ConfigurationError, TURNUnavailable
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.stun.client import STUNClient
from twisted_nat.turn.channel import StreamFramer, pad_for_stream
from twisted_nat.turn.client import TURNClient
from twisted_nat.turn.transactions import STREAM_SCHEDULE


@implementer(IUDPTransport)
class _StreamDatagrams:
    """
    The datagram face of a stream, for the multiplexer that runs over it:
    every message written goes onto the stream, ChannelData padded.
    """

    def __init__(self, stream: ITransport, peer: Address) -> None:
        self._stream = stream
        self._peer = peer

    def write(self, packet: bytes, addr: Address | None = None) -> None:
        if addr is not None and addr != self._peer:
            raise ValueError(f"a stream to {format_address(self._peer)} cannot reach {addr}")
        self._stream.write(pad_for_stream(packet))

    def connect(self, host: str, port: int) -> None:
        raise RuntimeError("a stream is connected already")

    def getHost(self) -> IPv4Address | IPv6Address:
        return cast(IPv4Address | IPv6Address, self._stream.getHost())

    def stopListening(self) -> None:
        self._stream.loseConnection()

    def setBroadcastAllowed(self, enabled: bool) -> None:
        raise RuntimeError("a stream does not broadcast")

    def getBroadcastAllowed(self) -> bool:
        return False


class TURNStreamProtocol(Protocol):
    """
    TURN over one TCP or TLS connection: cuts the stream into messages and
    hands them to a private multiplexer, on which a L{STUNClient} (without
    retransmissions) and a L{TURNClient} sit exactly as on a UDP socket.

    @ivar client: the TURN client, once connected.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, **client_options: Any) -> None:
        self._reactor = reactor
        self._options = client_options
        self._framer = StreamFramer()
        self._mux = UDPMultiplexer()
        self.client: TURNClient | None = None
        self.server: Address | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        peer = self.transport.getPeer()
        self.server = (peer.host, peer.port)  # type: ignore[attr-defined]
        self._mux.makeConnection(_StreamDatagrams(self.transport, self.server))
        stun = STUNClient(reactor=self._reactor, schedule=STREAM_SCHEDULE)
        self.client = TURNClient.on_multiplexer(
            self._mux,
            self._reactor,
            stun,
            server=self.server,
            on_close=self.transport.loseConnection,
            **self._options,
        )

    def dataReceived(self, data: bytes) -> None:
        assert self.server is not None
        try:
            frames = self._framer.feed(data)
        except ChannelDataDecodeError as e:
            self.log.warn(
                "TURN stream from {server} unreadable, closing: {error}",
                server=format_address(self.server),
                error=e,
            )
            assert self.transport is not None
            self.transport.loseConnection()
            return
        for frame in frames:
            self._mux.datagramReceived(frame, self.server)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.client is not None:
            self.client.lose_all(
                TURNUnavailable(f"the stream was closed: {reason.getErrorMessage()}", self.server)
            )
        if self._mux.transport is not None:
            self._mux.doStop()


class _StreamFactory(Factory):
    """Builds the one L{TURNStreamProtocol} of a L{connect_stream} call."""

    def __init__(self, reactor: IReactorTime, options: dict[str, Any]) -> None:
        self._reactor = reactor
        self._options = options

    def buildProtocol(self, addr: object) -> TURNStreamProtocol:
        return TURNStreamProtocol(self._reactor, **self._options)


def connect_stream(
    reactor: IReactorTime,
    endpoint: str | IStreamClientEndpoint,
    **client_options: Any,
) -> Deferred[TURNClient]:
    """
    Connect to a TURN server over a stream and return its client.

    @param reactor: the clock of the client's timers, and for a string
        C{endpoint} the reactor that connects, so it must then provide what
        the endpoint needs (C{IReactorTCP}, C{IReactorSSL}) as well as
        C{IReactorTime}.
    @param endpoint: a client endpoint or its string description, e.g.
        C{tcp:host=turn.example.com:port=3478} or
        C{tls:turn.example.com:5349}.
    @param client_options: keywords for L{TURNClient} (C{refresh_fraction},
        C{software}).
    @return: a Deferred firing with a L{TURNClient} whose
        L{allocate<TURNClient.allocate>} takes
        None as the server; or failing with L{TURNUnavailable} when the
        connection cannot be made, or L{ConfigurationError} for a bad
        endpoint description.
    """
    if isinstance(endpoint, str):
        try:
            parsed: IStreamClientEndpoint = clientFromString(reactor, endpoint)
        except (ValueError, KeyError, TypeError) as e:
            return defer.fail(ConfigurationError(f"bad TURN endpoint {endpoint!r}: {e}"))
    else:
        parsed = endpoint
    d: Deferred[Any] = parsed.connect(_StreamFactory(reactor, client_options))

    def connected(protocol: TURNStreamProtocol) -> TURNClient:
        assert protocol.client is not None
        return protocol.client

    def failed(failure: Failure) -> Failure:
        if failure.check(CancelledError):
            return failure
        error = TURNUnavailable(f"cannot connect: {failure.getErrorMessage()}")
        error.__cause__ = failure.value
        return Failure(error)

    return d.addCallbacks(connected, failed)
