"""
The rendezvous server: names bound to peer keys, the live connection of
each key, and a relay of signed offers between them.

    service = make_rendezvous_service(reactor, "tcp:8765", registry="names.db")
    service.setServiceParent(application)

A name belongs to the first key that proves it holds it, for good (the
registry, L{twisted_nat.rendezvous.registry}, keeps the bindings across
restarts); the newest connection of a key is the one offers reach.  The
server never holds a secret: offers and answers are signed end to end and
carry public keys only, so it can refuse service but not read or
redirect a session.  It listens on a Twisted server endpoint string, so
TLS is a matter of the string (C{"ssl:8765:privateKey=key.pem:certKey=cert.pem"}),
which hides who talks to whom from the network, not from the server.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.errors import (
    DuplicateName,
    MalformedSignal,
    NotRegistered,
    PeerUnavailable,
    RegistrationRefused,
    RendezvousError,
    UnknownPeer,
)
from twisted_nat.rendezvous.interfaces import DEFAULT_RELAY_TIMEOUT
from twisted_nat.rendezvous.protocol import (
    Challenge,
    Connect,
    DeliverOffer,
    Lookup,
    Register,
    Release,
    SignalingAMP,
    peer_address,
    registration_transcript,
)
from twisted_nat.rendezvous.registry import INameRegistry, MemoryRegistry
from twisted_nat.rendezvous.values import Offer
from twisted_nat.trust.keys import PeerKey

NONCE_SIZE = 32


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
    The live connections of one server, by peer key, and the registry of
    names bound to keys.
    """

    log = Logger()

    def __init__(
        self, reactor: IReactorTime, relay_timeout: float, registry: INameRegistry
    ) -> None:
        self.reactor = reactor
        self.relay_timeout = relay_timeout
        self.registry = registry
        self.by_key: dict[PeerKey, RendezvousServerProtocol] = {}
        self.connections: set[RendezvousServerProtocol] = set()
        self.stats = ServerStats()
        self._server_id: bytes | None = None

    def server_id(self) -> Deferred[bytes]:
        """The registry's id, asked once."""
        if self._server_id is not None:
            return defer.succeed(self._server_id)

        def keep(server_id: bytes) -> bytes:
            self._server_id = server_id
            return server_id

        return self.registry.server_id().addCallback(keep)

    def hold(self, connection: RendezvousServerProtocol, key: PeerKey) -> None:
        """Make C{connection} the one that reaches C{key}; an older one is dropped."""
        old = self.by_key.get(key)
        if old is not None and old is not connection:
            self.log.info(
                "{key} registered again from {peer}: dropping its older connection from {old}",
                key=key.short,
                peer=peer_address(connection),
                old=peer_address(old),
            )
            old.key = None
            if old.transport is not None:
                old.transport.loseConnection()
        if connection.key is not None and connection.key != key:
            self.release(connection)
        self.by_key[key] = connection

    def release(self, connection: RendezvousServerProtocol) -> None:
        key = connection.key
        if key is not None and self.by_key.get(key) is connection:
            del self.by_key[key]


class RendezvousServerProtocol(SignalingAMP):
    """One peer's connection to the rendezvous server."""

    log = Logger()

    def __init__(self, directory: PeerDirectory) -> None:
        super().__init__()
        self.directory = directory
        self.name: str | None = None
        self.key: PeerKey | None = None
        self.closed: Deferred[None] = Deferred()
        self._challenge: tuple[bytes, bytes] | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.directory.connections.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        peer = peer_address(self)
        self.directory.connections.discard(self)
        if self.key is not None and self.directory.by_key.get(self.key) is self:
            self.directory.release(self)
            self.log.info(
                "Peer {name} ({key}, {peer}) disconnected",
                name=self.name,
                key=self.key.short,
                peer=peer,
            )
        super().connectionLost(reason)
        self.closed.callback(None)

    @property
    def address(self) -> str | None:
        """The IP address this peer connects from (None when not IP)."""
        peer = self.transport.getPeer() if self.transport is not None else None
        host = getattr(peer, "host", None)
        try:
            return str(ipaddress.ip_address(host)) if isinstance(host, str) else None
        except ValueError:
            return None

    def malformed_refused(self, command: bytes) -> None:
        self.directory.stats.refused_malformed += 1

    def _refuse(self, error: RendezvousError) -> RendezvousError:
        self.directory.stats.refused += 1
        return error

    @Challenge.responder
    def challenge(self) -> Deferred[dict[str, object]]:
        nonce = os.urandom(NONCE_SIZE)

        def issued(server_id: bytes) -> dict[str, object]:
            self._challenge = (server_id, nonce)
            return {"server": server_id, "nonce": nonce}

        return self.directory.server_id().addCallback(issued)

    def _prove(self, action: str, name: str, key: PeerKey, signature: bytes) -> None:
        """Check C{signature} over our last challenge, which it uses up."""
        challenge, self._challenge = self._challenge, None
        if challenge is None:
            raise self._refuse(RegistrationRefused("ask for a challenge first"))
        server_id, nonce = challenge
        if not key.verify(signature, registration_transcript(server_id, nonce, action, name)):
            self.log.warn(
                "Refused to {action} {name} for {key} from {peer}: bad signature",
                action=action,
                name=name,
                key=key.short,
                peer=peer_address(self),
            )
            raise self._refuse(RegistrationRefused(f"the signature to {action} {name!r} is wrong"))

    @Register.responder
    def register(self, name: str, key: PeerKey, signature: bytes) -> Deferred[dict[str, object]]:
        self._prove("register", name, key, signature)

        def claimed(ours: bool) -> dict[str, object]:
            if not ours:
                self.log.warn(
                    "Refused {name} to {key} from {peer}: the name belongs to another key",
                    name=name,
                    key=key.short,
                    peer=peer_address(self),
                )
                raise self._refuse(DuplicateName(f"{name!r} belongs to another key"))
            if self.transport is None:  # gone while the registry answered
                return {}
            self.directory.hold(self, key)
            self.name, self.key = name, key
            self.directory.stats.registrations += 1
            self.log.info(
                "Peer {name} ({key}) registered from {peer}",
                name=name,
                key=key.short,
                peer=peer_address(self),
            )
            return {}

        return self.directory.registry.claim(name, key).addCallback(claimed)

    @Release.responder
    def release(self, name: str, key: PeerKey, signature: bytes) -> Deferred[dict[str, object]]:
        self._prove("release", name, key, signature)

        def released(was: bool) -> dict[str, object]:
            if not was:
                raise self._refuse(DuplicateName(f"{name!r} is not bound to that key"))
            self.log.info("{key} released the name {name}", key=key.short, name=name)
            if self.name == name and self.key == key:
                self.name = None
            return {}

        return self.directory.registry.release(name, key).addCallback(released)

    @Lookup.responder
    def lookup(self, name: str) -> Deferred[dict[str, object]]:
        def found(key: PeerKey | None) -> dict[str, object]:
            if key is None:
                raise self._refuse(UnknownPeer(f"no key is bound to {name!r}"))
            return {"key": key}

        return self.directory.registry.lookup(name).addCallback(found)

    @Connect.responder
    def connect(self, offer: Offer) -> Deferred[dict[str, object]]:
        if self.key is None or self.name is None:
            raise self._refuse(NotRegistered("register a name before sending offers"))
        if offer.from_key != self.key or offer.from_name != self.name:
            raise self._refuse(
                MalformedSignal(
                    f"the offer claims to be from {offer.from_name!r} ({offer.from_key.short}), "
                    f"but this connection is {self.name!r} ({self.key.short})"
                )
            )
        to = offer.to_name or offer.to_key.short  # type: ignore[union-attr]
        if offer.to_name is None:
            return self._relay(offer, offer.to_key, to)

        def bound(key: PeerKey | None) -> Deferred[dict[str, object]]:
            if key is None or (offer.to_key is not None and key != offer.to_key):
                raise self._refuse(UnknownPeer(f"no peer {to!r} with that key is registered"))
            return self._relay(offer, key, to)

        return self.directory.registry.lookup(offer.to_name).addCallback(bound)

    def _relay(self, offer: Offer, key: PeerKey | None, to: str) -> Deferred[dict[str, object]]:
        target = self.directory.by_key.get(key) if key is not None else None
        if target is None:
            raise self._refuse(UnknownPeer(f"{to!r} is not connected"))
        timeout = self.directory.relay_timeout
        # Our word on where each side connects from, for the peers' budgets.
        offer = attrs.evolve(offer, seen_from=self.address)
        relay: Deferred[dict[str, Any]] = target.callRemote(DeliverOffer, offer=offer)
        relay.addTimeout(timeout, self.directory.reactor)

        def answered(response: dict[str, Any]) -> dict[str, object]:
            answer = response["answer"]
            if answer.session_id != offer.session_id or answer.from_key != key:
                raise PeerUnavailable(f"{to} answered another session, or with another key")
            self.directory.stats.offers_relayed += 1
            self.log.debug("Relayed an offer from {source} to {to}", source=self.name, to=to)
            return {"answer": attrs.evolve(answer, seen_from=target.address)}

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
    @param registry: the names bound to keys; a new in-memory one if not given.
    """

    noisy = False

    def __init__(
        self,
        reactor: IReactorTime,
        relay_timeout: float = DEFAULT_RELAY_TIMEOUT,
        registry: INameRegistry | None = None,
    ) -> None:
        self.directory = PeerDirectory(
            reactor, relay_timeout, registry if registry is not None else MemoryRegistry()
        )

    @property
    def stats(self) -> ServerStats:
        return self.directory.stats

    def names(self) -> list[str]:
        """The names of the peers connected right now."""
        return sorted(c.name for c in self.directory.by_key.values() if c.name is not None)

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
