"""
L{ISignaling} inside one process: L{InMemorySignalingHub} plays the
rendezvous server for its L{LoopbackSignaling} peers, with the same name
binding (the first key to claim a name keeps it, in a
L{MemoryRegistry}), the same routing by name or key, and the same errors
in the same cases, so that applications can test their own connection
logic without a server.
"""

from __future__ import annotations

from typing import TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_nat.errors import (
    DuplicateName,
    MalformedSignal,
    NotRegistered,
    PeerUnavailable,
    RendezvousUnavailable,
    UnknownPeer,
)
from twisted_nat.rendezvous.interfaces import (
    DEFAULT_RELAY_TIMEOUT,
    ISignaling,
    OfferHandler,
    run_offer_handler,
)
from twisted_nat.rendezvous.registry import MemoryRegistry
from twisted_nat.rendezvous.values import Answer, Offer
from twisted_nat.trust.keys import Identity, PeerKey
from twisted_nat.trust.names import normalise_name

_T = TypeVar("_T")


def _result(d: Deferred[_T]) -> _T:
    """The result of a Deferred that a memory registry has already fired."""
    results: list[_T] = []
    d.addCallback(results.append)
    assert results, "the memory registry answers at once"
    return results[0]


class InMemorySignalingHub:
    """
    Peers in one process that reach each other by name or key, as through
    a rendezvous server.

    @param reactor: the clock for deliveries and relay timeouts.  With
        none (the default; the global reactor is not used), offers are
        delivered at once, inside L{LoopbackSignaling.connect}; with one, a
        turn of the reactor later (C{callLater(0)}), which is closer to a
        network and lets a relay timeout apply.
    @param relay_timeout: how long a peer's handler may take to answer,
        when there is a C{reactor}.
    """

    def __init__(
        self, reactor: IReactorTime | None = None, relay_timeout: float = DEFAULT_RELAY_TIMEOUT
    ) -> None:
        self.reactor = reactor
        self.relay_timeout = relay_timeout
        self.registry = MemoryRegistry()
        self._peers: dict[PeerKey, LoopbackSignaling] = {}

    def peer(
        self,
        name: str | None = None,
        identity: Identity | None = None,
        address: str | None = None,
    ) -> LoopbackSignaling:
        """
        A new peer of this hub with C{identity} (a new one if not given),
        already registered as C{name} if given, seen to connect from
        C{address} (a rendezvous server's word on offers and answers).
        """
        peer = LoopbackSignaling(self, identity if identity is not None else Identity.generate())
        peer.address = address
        if name is not None:
            failures: list[Failure] = []
            peer.register(name).addErrback(failures.append)
            if failures:
                failures[0].raiseException()
        return peer

    def names(self) -> list[str]:
        """The names of the peers registered right now."""
        return sorted(p.peer_name for p in self._peers.values() if p.peer_name is not None)

    def _claim(self, peer: LoopbackSignaling, name: str) -> None:
        key = peer.identity.public
        if not _result(self.registry.claim(name, key)):
            raise DuplicateName(f"{name!r} belongs to another key")
        old = self._peers.get(key)
        if old is not None and old is not peer:
            old.peer_name = None
        self._peers[key] = peer

    def _release(self, peer: LoopbackSignaling) -> None:
        if self._peers.get(peer.identity.public) is peer:
            del self._peers[peer.identity.public]

    def _lookup(self, name: str) -> PeerKey | None:
        return _result(self.registry.lookup(name))

    def _deliver(self, offer: Offer, sender: LoopbackSignaling) -> Deferred[Answer]:
        offer = attrs.evolve(offer, seen_from=sender.address)
        key = offer.to_key
        if offer.to_name is not None:
            bound = self._lookup(offer.to_name)
            if key is not None and bound != key:
                bound = None
            key = bound
        target = self._peers.get(key) if key is not None else None
        to = offer.to_name or (offer.to_key.short if offer.to_key else "?")
        if target is None:
            return defer.fail(UnknownPeer(f"{to!r} is not connected"))
        if self.reactor is None:
            return target._receive(offer)
        reactor = self.reactor
        d: Deferred[Answer] = Deferred()
        reactor.callLater(0, lambda: target._receive(offer).chainDeferred(d))

        def timed_out(result: Answer | Failure, timeout: float) -> Answer | Failure:
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                return Failure(PeerUnavailable(f"{to} did not answer within {timeout:g} s"))
            return result

        return d.addTimeout(self.relay_timeout, reactor, onTimeoutCancel=timed_out)


@implementer(ISignaling)
class LoopbackSignaling:
    """One peer of an L{InMemorySignalingHub}, with its key."""

    log = Logger()

    def __init__(self, hub: InMemorySignalingHub, identity: Identity) -> None:
        self.hub = hub
        self.identity = identity
        self.peer_name: str | None = None
        self.address: str | None = None
        """Where the hub says this peer connects from."""
        self.closed = False
        self._handler: OfferHandler | None = None
        self._waiters: list[Deferred[None]] = []

    def register(self, name: str) -> Deferred[None]:
        if self.closed:
            return defer.fail(RendezvousUnavailable("this signalling peer is closed"))
        try:
            name = normalise_name(name)
            self.hub._claim(self, name)
        except ValueError as e:
            return self._refused(MalformedSignal(str(e)))
        except DuplicateName as e:
            return self._refused(e)
        self.peer_name = name
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)
        return defer.succeed(None)

    def _refused(self, error: Exception) -> Deferred[None]:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(error)
        return defer.fail(error)

    def when_registered(self) -> Deferred[None]:
        if self.closed:
            return defer.fail(RendezvousUnavailable("this signalling peer is closed"))
        if self.peer_name is not None:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def lookup(self, name: str) -> Deferred[PeerKey]:
        if self.closed:
            return defer.fail(RendezvousUnavailable("this signalling peer is closed"))
        try:
            name = normalise_name(name)
        except ValueError as e:
            return defer.fail(MalformedSignal(str(e)))
        key = self.hub._lookup(name)
        if key is None:
            return defer.fail(UnknownPeer(f"no key is bound to {name!r}"))
        return defer.succeed(key)

    def connect(self, offer: Offer) -> Deferred[Answer]:
        if self.closed:
            return defer.fail(RendezvousUnavailable("this signalling peer is closed"))
        if self.peer_name is None:
            return defer.fail(NotRegistered("register a name before sending offers"))
        if offer.from_name != self.peer_name or offer.from_key != self.identity.public:
            return defer.fail(
                MalformedSignal(
                    f"the offer is from {offer.from_name!r} ({offer.from_key.short}), "
                    f"we are {self.peer_name!r} ({self.identity.public.short})"
                )
            )
        return self.hub._deliver(offer, self)

    def set_offer_handler(self, handler: OfferHandler | None) -> None:
        self._handler = handler

    def close(self) -> Deferred[None]:
        self.hub._release(self)
        self.closed = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(RendezvousUnavailable("this signalling peer is closed"))
        return defer.succeed(None)

    def _receive(self, offer: Offer) -> Deferred[Answer]:
        if self.closed:
            return defer.fail(PeerUnavailable("the peer has closed"))
        answering = run_offer_handler(self._handler, offer, self.log)
        return answering.addCallback(attrs.evolve, seen_from=self.address)
