"""
Twisted endpoints on peer streams, so that any Twisted protocol (AMP, HTTP,
a line protocol) runs over a stream to a peer unchanged:

    endpoint = PeerEndpoint(service, "bob")
    protocol = await endpoint.connect(Factory.forProtocol(MyProtocol))

    PeerServerEndpoint(service).listen(Factory.forProtocol(MyServer))
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError, ConnectError
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from zope.interface import implementer

from twisted_nat.streams.peers import PeerStreams
from twisted_nat.streams.stream import PeerAddress
from twisted_nat.trust.keys import PeerKey


class StreamService(Protocol):
    """What the endpoints need of a L{twisted_nat.service.NATTraversalService}."""

    streams: PeerStreams

    @property
    def key(self) -> PeerKey: ...

    def open_stream(self, peer: str, protocol: IProtocol) -> Deferred[IProtocol]: ...


@implementer(IStreamClientEndpoint)
class PeerEndpoint:
    """A stream to the peer called C{peer}, connected first if it is not."""

    def __init__(self, service: StreamService, peer: str) -> None:
        self._service = service
        self._peer = peer

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        protocol = protocolFactory.buildProtocol(PeerAddress(self._peer, None))
        if protocol is None:
            return fail(ConnectError(string="the factory built no protocol"))
        return self._service.open_stream(self._peer, protocol)


@implementer(IListeningPort)
class PeerListening:
    """The streams peers open to us go to one factory until L{stopListening}."""

    def __init__(self, streams: PeerStreams, factory: IProtocolFactory, host: PeerAddress) -> None:
        self._streams = streams
        self._factory = factory
        self._host = host

    def startListening(self) -> None:
        if self._streams.factory is not None and self._streams.factory is not self._factory:
            raise CannotListenError(None, 0, "this service's streams have a factory already")
        self._streams.factory = self._factory
        self._factory.doStart()

    def stopListening(self) -> Deferred[None]:
        if self._streams.factory is self._factory:
            self._streams.factory = None
            self._factory.doStop()
        return succeed(None)

    def getHost(self) -> PeerAddress:
        return self._host


@implementer(IStreamServerEndpoint)
class PeerServerEndpoint:
    """The streams any connected peer opens to this service."""

    def __init__(self, service: StreamService) -> None:
        self._service = service

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        host = PeerAddress(None, self._service.key)
        port = PeerListening(self._service.streams, protocolFactory, host)
        try:
            port.startListening()
        except CannotListenError as e:
            return fail(e)
        return succeed(port)
