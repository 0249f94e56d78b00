"""
L{ISignaling}: how two peers exchange an L{Offer} and its L{Answer}, and an
in-memory implementation of it.

Hole punching only needs the other side's candidates and a shared secret;
how they travel is not its business.  The rendezvous client carries them
through a rendezvous server, but an application that already has a channel
between its users (a chat, a game lobby, a web API) can carry them itself by
providing L{ISignaling}, and nothing else in twisted-nat changes.

L{InMemorySignalingHub} and L{LoopbackSignaling} are the reference
implementation: peers in one process, with the same errors in the same
cases as the rendezvous server, so that applications can test their own
connection logic without a server.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from twisted_nat.errors import (
    DuplicateName,
    MalformedSignal,
    NotRegistered,
    PeerUnavailable,
    RendezvousUnavailable,
    UnknownPeer,
)
from twisted_nat.rendezvous.values import Answer, Offer, check_name

OfferHandler = Callable[[Offer], "Deferred[Answer] | Answer"]
"""
Called with each offer another peer sends us; returns our answer (or a
Deferred of it).  Raising L{PeerUnavailable} refuses the offer with that
message; any other failure is logged here and the peer only learns that we
could not answer.
"""

DEFAULT_RELAY_TIMEOUT = 10.0


class ISignaling(Interface):
    """A way to reach other peers by name, to swap offers and answers."""

    def register(name: str) -> Deferred[None]:
        """
        Make this peer reachable as C{name}.

        @return: a Deferred firing when the name is ours, or failing with
            L{DuplicateName} if someone else holds it, L{MalformedSignal} if
            it is not a valid name, or L{RendezvousUnavailable}.
        """

    def when_registered() -> Deferred[None]:
        """
        Fire once this peer is registered under a name: at once if it is
        now, otherwise when the next registration succeeds.  A peer waits
        on it before sending offers, which need a registered name.

        @return: a Deferred firing with C{None}, or failing with the
            refusal of that registration (L{DuplicateName},
            L{MalformedSignal}), or with L{RendezvousUnavailable} if this
            peer is closed first.
        """

    def connect(name: str, offer: Offer) -> Deferred[Answer]:
        """
        Send C{offer} to the peer registered as C{name} and wait for its answer.

        C{offer.from_name} must be the name this peer registered.

        @return: a Deferred firing with the peer's L{Answer} (same session
            id as C{offer}), or failing with L{UnknownPeer},
            L{PeerUnavailable}, L{NotRegistered}, L{MalformedSignal} or
            L{RendezvousUnavailable}.
        """

    def set_offer_handler(handler: OfferHandler | None) -> None:
        """
        Answer offers from other peers with C{handler}; with C{None}, refuse
        them (the sender gets L{PeerUnavailable}).
        """

    def close() -> Deferred[None]:
        """Stop being reachable; later calls fail with L{RendezvousUnavailable}."""


def run_offer_handler(handler: OfferHandler | None, offer: Offer, log: Logger) -> Deferred[Answer]:
    """
    Ask C{handler} for the answer to C{offer}, and make sure it is one.

    Every failure becomes L{PeerUnavailable}: the peer that sent the offer
    is told no more than that, because a traceback from our application is
    none of its business (it is logged here instead).
    """
    if handler is None:
        return defer.fail(PeerUnavailable("the peer takes no offers"))

    def check(answer: object) -> Answer:
        if not isinstance(answer, Answer) or answer.session_id != offer.session_id:
            log.error(
                "The offer handler answered an offer from {name} with {answer!r}, "
                "not an Answer for its session",
                name=offer.from_name,
                answer=answer,
            )
            raise PeerUnavailable("the peer gave no valid answer")
        return answer

    def failed(failure: Failure) -> Failure:
        if failure.check(PeerUnavailable):
            return failure
        log.failure(
            "The offer handler failed on an offer from {name}",
            failure,
            LogLevel.error,
            name=offer.from_name,
        )
        return Failure(PeerUnavailable("the peer could not answer the offer"))

    return defer.maybeDeferred(handler, offer).addCallbacks(check, failed)


class InMemorySignalingHub:
    """
    Peers in one process that reach each other by name, as through a
    rendezvous server.

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
        self._peers: dict[str, LoopbackSignaling] = {}

    def peer(self, name: str | None = None) -> LoopbackSignaling:
        """A new peer of this hub, already registered as C{name} if given."""
        peer = LoopbackSignaling(self)
        if name is not None:
            peer.register(name).addErrback(lambda f: None)
            if peer.peer_name != name:
                raise DuplicateName(f"{name!r} is already registered")
        return peer

    def names(self) -> list[str]:
        """The names registered right now."""
        return sorted(self._peers)

    def _claim(self, peer: LoopbackSignaling, name: str) -> None:
        holder = self._peers.get(name)
        if holder is not None and holder is not peer:
            raise DuplicateName(f"{name!r} is already registered")
        self._release(peer)
        self._peers[name] = peer

    def _release(self, peer: LoopbackSignaling) -> None:
        if peer.peer_name is not None and self._peers.get(peer.peer_name) is peer:
            del self._peers[peer.peer_name]

    def _deliver(self, name: str, offer: Offer) -> Deferred[Answer]:
        target = self._peers.get(name)
        if target is None:
            return defer.fail(UnknownPeer(f"no peer is registered as {name!r}"))
        if self.reactor is None:
            return target._receive(offer)
        reactor = self.reactor
        d: Deferred[Answer] = Deferred()
        reactor.callLater(0, lambda: target._receive(offer).chainDeferred(d))

        def timed_out(result: Answer | Failure, timeout: float) -> Answer | Failure:
            if isinstance(result, Failure) and result.check(defer.CancelledError):
                return Failure(PeerUnavailable(f"{name} did not answer within {timeout:g} s"))
            return result

        return d.addTimeout(self.relay_timeout, reactor, onTimeoutCancel=timed_out)


@implementer(ISignaling)
class LoopbackSignaling:
    """One peer of an L{InMemorySignalingHub}."""

    log = Logger()

    def __init__(self, hub: InMemorySignalingHub) -> None:
        self.hub = hub
        self.peer_name: str | None = None
        self.closed = False
        self._handler: OfferHandler | None = None
        self._waiters: list[Deferred[None]] = []

    def register(self, name: str) -> Deferred[None]:
        if self.closed:
            return defer.fail(RendezvousUnavailable("this signalling peer is closed"))
        try:
            check_name(name)
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

    def connect(self, name: str, offer: Offer) -> Deferred[Answer]:
        if self.closed:
            return defer.fail(RendezvousUnavailable("this signalling peer is closed"))
        if self.peer_name is None:
            return defer.fail(NotRegistered("register a name before sending offers"))
        try:
            check_name(name)
        except ValueError as e:
            return defer.fail(MalformedSignal(str(e)))
        if offer.from_name != self.peer_name:
            return defer.fail(
                MalformedSignal(f"the offer is from {offer.from_name!r}, we are {self.peer_name!r}")
            )
        return self.hub._deliver(name, offer)

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
        return run_offer_handler(self._handler, offer, self.log)
