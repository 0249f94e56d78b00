"""
The rendezvous server: a directory of names, each held by one live
connection, and a relay of offers between them.

    service = make_rendezvous_service(reactor, "tcp:8765")
    service.setServiceParent(application)

It listens on a Twisted server endpoint string, so TLS is a matter of the
string (C{"ssl:8765:privateKey=key.pem:certKey=cert.pem"}) and needs no
code here; use it, because offers carry the session keys of the peers.
The server keeps no state beyond its connections: restarting it loses
nothing that the clients do not restore by registering again when they
reconnect.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IAddress, IListeningPort, IReactorTime
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.address import format_address
from twisted_nat.errors import (
    ConfigurationError,
    DuplicateName,
    MalformedSignal,
    NotRegistered,
    PeerUnavailable,
    RendezvousError,
    UnknownPeer,
)
from twisted_nat.rendezvous.interfaces import DEFAULT_RELAY_TIMEOUT
from twisted_nat.rendezvous.protocol import (
    Connect,
    DeliverOffer,
    Register,
    SignalingAMP,
    peer_address,
)
from twisted_nat.rendezvous.values import Offer


@attrs.define
class ServerStats:
    """Counters of one rendezvous server."""

    registrations: int = 0
    offers_relayed: int = 0
    relays_failed: int = 0
    refused: int = 0
    refused_malformed: int = 0


class PeerDirectory:
    """
    The names registered at one server and the connections holding them.

    A name belongs to a live connection and to nothing else: when the
    connection drops, the name is free again.
    """

    def __init__(self, reactor: IReactorTime, relay_timeout: float) -> None:
        self.reactor = reactor
        self.relay_timeout = relay_timeout
        self.peers: dict[str, RendezvousServerProtocol] = {}
        self.connections: set[RendezvousServerProtocol] = set()
        self.stats = ServerStats()

    def release(self, connection: RendezvousServerProtocol) -> None:
        name = connection.name
        if name is not None and self.peers.get(name) is connection:
            del self.peers[name]


class RendezvousServerProtocol(SignalingAMP):
    """One peer's connection to the rendezvous server."""

    log = Logger()

    def __init__(self, directory: PeerDirectory) -> None:
        super().__init__()
        self.directory = directory
        self.name: str | None = None
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.directory.connections.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        peer = peer_address(self)
        self.directory.connections.discard(self)
        if self.name is not None and self.directory.peers.get(self.name) is self:
            self.directory.release(self)
            self.log.info("Peer {name} ({peer}) disconnected", name=self.name, peer=peer)
        super().connectionLost(reason)
        self.closed.callback(None)

    def malformed_refused(self, command: bytes) -> None:
        self.directory.stats.refused_malformed += 1

    def _refuse(self, error: RendezvousError) -> RendezvousError:
        self.directory.stats.refused += 1
        return error

    @Register.responder
    def register(self, name: str) -> dict[str, object]:
        holder = self.directory.peers.get(name)
        if holder is not None and holder is not self:
            raise self._refuse(DuplicateName(f"{name!r} is registered by another connection"))
        self.directory.release(self)
        self.directory.peers[name] = self
        self.name = name
        self.directory.stats.registrations += 1
        self.log.info(
            "Peer {name} registered from {peer}",
            name=name,
            peer=peer_address(self),
        )
        return {}

    @Connect.responder
    def connect(self, to: str, offer: Offer) -> Deferred[dict[str, object]]:
        if self.name is None:
            raise self._refuse(NotRegistered("register a name before sending offers"))
        if offer.from_name != self.name:
            raise self._refuse(
                MalformedSignal(
                    f"the offer claims to be from {offer.from_name!r}, "
                    f"but this connection is {self.name!r}"
                )
            )
        target = self.directory.peers.get(to)
        if target is None:
            raise self._refuse(UnknownPeer(f"no peer is registered as {to!r}"))
        timeout = self.directory.relay_timeout
        relay: Deferred[dict[str, Any]] = target.callRemote(DeliverOffer, offer=offer)
        relay.addTimeout(timeout, self.directory.reactor)

        def answered(response: dict[str, Any]) -> dict[str, object]:
            answer = response["answer"]
            if answer.session_id != offer.session_id:
                raise PeerUnavailable(f"{to} answered another session")
            self.directory.stats.offers_relayed += 1
            self.log.debug("Relayed an offer from {source} to {to}", source=self.name, to=to)
            return {"answer": answer}

        def failed(failure: Failure) -> Failure:
            self.directory.stats.relays_failed += 1
            if failure.check(PeerUnavailable):
                error = failure.value
            elif failure.check(defer.TimeoutError):
                error = PeerUnavailable(f"{to} did not answer within {timeout:g} s")
            elif failure.check(MalformedSignal):
                error = PeerUnavailable(f"{to} sent a malformed answer")
            elif failure.check(ConnectionClosed):
                error = PeerUnavailable(f"{to} went away before answering")
            else:
                error = PeerUnavailable(f"{to} could not answer")
            self.log.info(
                "Could not relay an offer from {source} to {to}: {error}",
                source=self.name,
                to=to,
                error=failure.value,
            )
            return Failure(error)

        return relay.addCallback(answered).addErrback(failed)


class RendezvousServerFactory(ServerFactory):
    """
    Builds one L{RendezvousServerProtocol} per connection, all sharing one
    L{PeerDirectory}.

    @param reactor: the clock for relay timeouts.
    @param relay_timeout: how long a peer may take to answer an offer
        relayed to it before the sender gets L{PeerUnavailable}.
    """

    noisy = False

    def __init__(self, reactor: IReactorTime, relay_timeout: float = DEFAULT_RELAY_TIMEOUT) -> None:
        self.directory = PeerDirectory(reactor, relay_timeout)

    @property
    def stats(self) -> ServerStats:
        return self.directory.stats

    def names(self) -> list[str]:
        """The names registered right now."""
        return sorted(self.directory.peers)

    def buildProtocol(self, addr: IAddress | None) -> RendezvousServerProtocol:
        protocol = RendezvousServerProtocol(self.directory)
        protocol.factory = self
        return protocol

    def disconnect_all(self) -> Deferred[None]:
        """
        Drop every connection, firing when all are closed: a stopped server
        must not keep answering on connections it accepted before, or its
        clients would never learn that it went away.
        """
        connections = list(self.directory.connections)
        closed = [connection.closed for connection in connections]
        for connection in connections:
            if connection.transport is not None:
                connection.transport.loseConnection()
        return defer.gatherResults(closed).addCallback(lambda _: None)


class RendezvousService(Service):
    """
    Serves rendezvous on a server endpoint string while running.

    The socket is bound in C{privilegedStartService}, so that twistd can
    bind a low port before dropping privileges, and a listening failure that
    is known at once is raised from there (for TCP it always is), so that a
    bad port ends the process instead of leaving a server that serves
    nothing.  L{when_listening} gives the port, for tests that listen on
    port 0.

    @param reactor: listens (so it provides what the endpoint needs, such
        as C{IReactorTCP}) and times relays out.
    @param endpoint: a server endpoint string, e.g. C{"tcp:8765"}.
    @param relay_timeout: as for L{RendezvousServerFactory}.
    @param factory: the factory to serve, if not a new one.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: str,
        relay_timeout: float = DEFAULT_RELAY_TIMEOUT,
        factory: RendezvousServerFactory | None = None,
    ) -> None:
        try:
            self._endpoint = serverFromString(reactor, endpoint)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigurationError(f"bad rendezvous server endpoint {endpoint!r}: {e}") from None
        self.endpoint = endpoint
        self.factory = factory or RendezvousServerFactory(reactor, relay_timeout)
        self.port: IListeningPort | None = None
        self._started = False
        self._listen_error: Failure | None = None
        self._waiters: list[Deferred[IListeningPort]] = []

    def privilegedStartService(self) -> None:
        self._listen()
        super().privilegedStartService()

    def startService(self) -> None:
        if not self._started:
            self._listen()
        super().startService()

    def _listen(self) -> None:
        self._started = True
        self._listen_error = None
        self._endpoint.listen(self.factory).addCallbacks(self._listened, self._listen_failed)
        if self._listen_error is not None:
            error, self._listen_error = self._listen_error, None
            self._started = False
            error.raiseException()

    def _listened(self, port: IListeningPort) -> None:
        if not self._started:  # stopped while the endpoint was still binding
            port.stopListening()
            return
        self.port = port
        host = port.getHost()
        self.log.info(
            "Rendezvous server listening on {address}",
            address=(
                format_address((host.host, host.port))
                if isinstance(host, IPv4Address | IPv6Address)
                else str(host)
            ),
        )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(port)

    def _listen_failed(self, failure: Failure) -> None:
        self.log.error(
            "The rendezvous server cannot listen on {endpoint}: {error}",
            endpoint=self.endpoint,
            error=failure.getErrorMessage(),
        )
        self._listen_error = failure
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    def when_listening(self) -> Deferred[IListeningPort]:
        """The listening port, once the endpoint has bound it."""
        if self.port is not None:
            return defer.succeed(self.port)
        if self._listen_error is not None:
            return defer.fail(self._listen_error)
        if not self._started:
            return defer.fail(ConfigurationError("the rendezvous service is not running"))
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._started = False
        port, self.port = self.port, None
        stopping = [self.factory.disconnect_all()]
        if port is not None:
            stopped = port.stopListening()
            if stopped is not None:
                stopping.append(stopped)
        return defer.gatherResults(stopping).addCallback(lambda _: None)


def make_rendezvous_service(
    reactor: IReactorTime, endpoint: str, relay_timeout: float = DEFAULT_RELAY_TIMEOUT
) -> RendezvousService:
    """
    A rendezvous server on C{endpoint} (a server endpoint string such as
    C{"tcp:8765:interface=127.0.0.1"}), to be started or given a parent;
    C{reactor} as for L{RendezvousService}.
    """
    return RendezvousService(reactor, endpoint, relay_timeout)
