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

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, ITCPTransport
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.errors import (
    DuplicateName,
    MalformedSignal,
    NotRegistered,
    PeerUnavailable,
    RegistrationRefused,
    RegistryError,
    RendezvousBusy,
    RendezvousError,
    UnknownPeer,
)
from twisted_nat.rendezvous.bounds import OVERSIZED
from twisted_nat.rendezvous.directory import ClusterNodes, PeerDirectory, ServerStats
from twisted_nat.rendezvous.interfaces import DEFAULT_RELAY_TIMEOUT
from twisted_nat.rendezvous.protocol import (
    Challenge,
    Connect,
    Lookup,
    Register,
    Release,
    SignalingAMP,
    peer_address,
    registration_transcript,
)
from twisted_nat.rendezvous.quotas import ServerLimits, source_of
from twisted_nat.rendezvous.registry import INameRegistry, MemoryRegistry
from twisted_nat.rendezvous.relay import deliver, through_node
from twisted_nat.rendezvous.values import Answer, Offer
from twisted_nat.trust.keys import PeerKey

NONCE_SIZE = 32

__all__ = ["RendezvousServerFactory", "RendezvousServerProtocol", "ServerStats"]


class RendezvousServerProtocol(SignalingAMP):
    """One peer's connection to the rendezvous server."""

    log = Logger()

    def __init__(self, directory: PeerDirectory[RendezvousServerProtocol]) -> None:
        super().__init__()
        self.directory = directory
        self.name: str | None = None
        self.key: PeerKey | None = None
        self.source: str | None = None
        self.closed: Deferred[None] = Deferred()
        self._challenge: tuple[bytes, bytes] | None = None
        self._admitted = False
        self._idle: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        directory = self.directory
        assert self.transport is not None
        self.source = source_of(self.transport.getPeer())
        refusal = directory.admission.admit(self.source)
        if refusal is not None:
            directory.stats.refused_connections += 1
            directory.refused(self, "connection refused", refusal)
            if ITCPTransport.providedBy(self.transport):
                self.transport.abortConnection()
            else:
                self.transport.loseConnection()
            return
        self._admitted = True
        directory.connections.add(self)
        self._idle = directory.reactor.callLater(directory.limits.idle_timeout, self._idle_out)

    def _idle_out(self) -> None:
        self._idle = None
        if self.key is None and self.transport is not None:
            self.directory.stats.closed_idle += 1
            self.directory.refused(
                self,
                "idle",
                f"no name registered within {self.directory.limits.idle_timeout:g} s",
            )
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        peer = peer_address(self)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._admitted:
            self._admitted = False
            self.directory.admission.leave(self.source)
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

    def input_refused(self, reason: str, detail: str) -> None:
        if reason == OVERSIZED:
            self.directory.stats.closed_oversized += 1
        self.directory.refused(self, reason, detail)

    def _refuse(self, error: RendezvousError) -> RendezvousError:
        self.directory.stats.refused += 1
        return error

    def _busy(self, reason: str, why: str) -> RendezvousError:
        self.directory.stats.refused_busy += 1
        self.directory.refused(self, reason, why)
        return self._refuse(RendezvousBusy(why))

    def _store_failed(self, failure: Failure) -> Failure:
        """The registry could not answer (its file, or Redis): busy, for now."""
        failure.trap(RegistryError)
        self.directory.refused(self, "registry unavailable", str(failure.value))
        return Failure(self._busy_later(f"the name registry cannot answer now: {failure.value}"))

    def _busy_later(self, why: str) -> RendezvousError:
        self.directory.stats.refused_busy += 1
        return self._refuse(RendezvousBusy(why))

    @Challenge.responder
    def challenge(self) -> Deferred[dict[str, object]]:
        nonce = os.urandom(NONCE_SIZE)

        def issued(server_id: bytes) -> dict[str, object]:
            self._challenge = (server_id, nonce)
            return {"server": server_id, "nonce": nonce}

        return self.directory.server_id().addCallback(issued)

    def _prove(self, action: str, name: str, key: PeerKey, signature: bytes) -> None:
        """
        Check C{signature} over our last challenge, which it uses up, once
        the rate of registrations from our source allows.
        """
        challenge, self._challenge = self._challenge, None
        if not self.directory.may_register(self.source):
            raise self._busy(
                "registrations",
                f"too many registrations from {self.source}; try again later",
            )
        if challenge is None:
            raise self._refuse(RegistrationRefused("ask for a challenge first"))
        server_id, nonce = challenge
        if not key.verify(signature, registration_transcript(server_id, nonce, action, name)):
            self.directory.refused(self, "bad signature", f"to {action} {name!r} for {key.short}")
            raise self._refuse(RegistrationRefused(f"the signature to {action} {name!r} is wrong"))

    @Register.responder
    def register(self, name: str, key: PeerKey, signature: bytes) -> Deferred[dict[str, object]]:
        self._prove("register", name, key, signature)

        def claimed(ours: bool) -> dict[str, object]:
            if not ours:
                self.directory.refused(
                    self, "name taken", f"{name!r} for {key.short}: it belongs to another key"
                )
                raise self._refuse(DuplicateName(f"{name!r} belongs to another key"))
            if self.transport is None:  # gone while the registry answered
                return {}
            self.directory.hold(self, key)
            self.name, self.key = name, key
            if self._idle is not None:
                self._idle.cancel()
                self._idle = None
            self.directory.stats.registrations += 1
            self.log.info(
                "Peer {name} ({key}) registered from {peer}",
                name=name,
                key=key.short,
                peer=peer_address(self),
            )
            return {}

        d = self.directory.registry.claim(name, key).addErrback(self._store_failed)
        return d.addCallback(claimed)

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

        d = self.directory.registry.release(name, key).addErrback(self._store_failed)
        return d.addCallback(released)

    @Lookup.responder
    def lookup(self, name: str) -> Deferred[dict[str, object]]:
        def found(key: PeerKey | None) -> dict[str, object]:
            if key is None:
                raise self._refuse(UnknownPeer(f"no key is bound to {name!r}"))
            return {"key": key}

        d = self.directory.registry.lookup(name).addErrback(self._store_failed)
        return d.addCallback(found)

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

        d = self.directory.registry.lookup(offer.to_name).addErrback(self._store_failed)
        return d.addCallback(bound)

    def _relay(self, offer: Offer, key: PeerKey | None, to: str) -> Deferred[dict[str, object]]:
        target = self.directory.by_key.get(key) if key is not None else None
        # Our word on where each side connects from, for the peers' budgets.
        offer = attrs.evolve(offer, seen_from=self.address)
        cluster = self.directory.cluster
        if key is None or (target is None and cluster is None):
            raise self._refuse(UnknownPeer(f"{to!r} is not connected"))
        try:
            if target is not None:
                relayed = deliver(self.directory, self, target, offer, to)
            else:
                assert cluster is not None
                relayed = through_node(self.directory, self, cluster, offer, key, to)
        except RendezvousBusy as e:
            self.directory.refused(self, "offers waiting", str(e))
            raise self._refuse(e) from None

        def answered(answer: Answer) -> dict[str, object]:
            self.log.debug("Relayed an offer from {source} to {to}", source=self.name, to=to)
            return {"answer": answer}

        def failed(failure: Failure) -> Failure:
            failure.trap(PeerUnavailable, UnknownPeer, RendezvousBusy)
            if failure.check(UnknownPeer):  # no node holds it: as when none is connected here
                self._refuse(failure.value)  # type: ignore[arg-type]
                return failure
            self.directory.refused(
                self, "relay failed", f"an offer from {self.name} to {to}: {failure.value}"
            )
            return failure

        return relayed.addCallbacks(answered, failed)


class RendezvousServerFactory(ServerFactory):
    """
    Builds one L{RendezvousServerProtocol} per connection, all sharing one
    L{PeerDirectory}.

    @param reactor: the clock for relay timeouts.
    @param relay_timeout: how long a peer may take to answer an offer
        relayed to it before the sender gets L{PeerUnavailable}.
    @param registry: the names bound to keys; a new in-memory one if not given.
    @param limits: what strangers may hold; the defaults if not given.
    @param cluster: the other rendezvous nodes sharing our peers (and then
        C{registry} is the one they share), or None for a server on its own.
    """

    noisy = False

    def __init__(
        self,
        reactor: IReactorTime,
        relay_timeout: float = DEFAULT_RELAY_TIMEOUT,
        registry: INameRegistry | None = None,
        limits: ServerLimits | None = None,
        cluster: ClusterNodes | None = None,
    ) -> None:
        self.directory: PeerDirectory[RendezvousServerProtocol] = PeerDirectory(
            reactor,
            relay_timeout,
            registry if registry is not None else MemoryRegistry(),
            limits if limits is not None else ServerLimits(),
        )
        if cluster is not None:
            self.directory.cluster = cluster
            cluster.serve(self._from_node, self._moved)

    def _from_node(self, offer: Offer, key: PeerKey, node: str) -> Deferred[Answer]:
        """An offer another node relays to C{key}, which we hold."""
        target = self.directory.by_key.get(key)
        if target is None or (offer.to_key is not None and offer.to_key != key):
            return defer.fail(UnknownPeer(f"{key.short} is not connected to this node"))
        try:
            answer = deliver(self.directory, ("node", node), target, offer, target.name or "")
        except RendezvousBusy as e:
            return defer.fail(e)
        self.directory.stats.offers_from_nodes += 1
        return answer

    def _moved(self, key: PeerKey, node: str | None) -> None:
        """C{key} registered at another node (C{node}, if known): its connection here goes."""
        connection = self.directory.by_key.get(key)
        if connection is None:
            return
        self.directory.stats.moved += 1
        RendezvousServerProtocol.log.info(
            "{name} ({key}) registered at another rendezvous node: dropping its older "
            "connection here from {peer}",
            name=connection.name,
            key=key.short,
            peer=peer_address(connection),
        )
        self.directory.release(connection)
        self.directory.supersede(
            connection, "your key registered at another node of this rendezvous"
        )

    @property
    def stats(self) -> ServerStats:
        return self.directory.stats

    def names(self) -> list[str]:
        """The names of the peers connected right now."""
        return sorted(c.name for c in self.directory.by_key.values() if c.name is not None)

    def status(self) -> dict[str, object]:
        """The server's counters, what it holds, and its part in a cluster, for C{--status}."""
        directory = self.directory
        return {
            "peers": len(directory.by_key),
            "connections": len(directory.connections),
            "offers_waiting": directory.pending.total,
            "stats": attrs.asdict(directory.stats),
            "refused": dict(directory.drops.counts),
            "cluster": None if directory.cluster is None else directory.cluster.status(),
        }

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
