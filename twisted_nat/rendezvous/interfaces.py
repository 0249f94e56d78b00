"""
L{ISignaling}: how two peers exchange an L{Offer} and its L{Answer}, and an
in-memory implementation of it.

Hole punching only needs the other side's signed offer or answer; how
they travel is not its business, and since they are signed end to end, it
need not trust whoever carries them.  The rendezvous client carries them
through a rendezvous server, but an application that already has a channel
between its users (a chat, a game lobby, a web API) can carry them itself by
providing L{ISignaling}, and nothing else in twisted-nat changes.

L{twisted_nat.rendezvous.loopback} is the reference implementation: peers
in one process, with the same errors in the same cases as the rendezvous
server, so that applications can test their own connection logic without
a server.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from twisted_nat.errors import (
    PeerUnavailable,
)
from twisted_nat.rendezvous.values import Answer, Offer
from twisted_nat.trust.keys import PeerKey

OfferHandler = Callable[[Offer], "Deferred[Answer] | Answer"]
"""
Called with each offer another peer sends us; returns our answer (or a
Deferred of it).  Raising L{PeerUnavailable} refuses the offer with that
message; any other failure is logged here and the peer only learns that we
could not answer.
"""

DEFAULT_RELAY_TIMEOUT = 10.0


class ISignaling(Interface):
    """A way to reach other peers by name or key, to swap offers and answers."""

    identity = Attribute("The L{Identity} whose key our names are bound to and offers signed by.")
    peer_name = Attribute("The name we are registered as (normalised), or None.")

    def register(name: str) -> Deferred[None]:
        """
        Make this peer reachable as C{name}, bound to our key.

        @return: a Deferred firing when the name is ours, or failing with
            L{DuplicateName} if another key holds it, L{MalformedSignal} if
            it is not a valid name, or L{RendezvousUnavailable}.
        """

    def lookup(name: str) -> Deferred[PeerKey]:
        """
        The key C{name} is bound to, as the signalling channel says: a
        claim to pin on first use, not a proof.

        @return: a Deferred firing with the key, or failing with
            L{UnknownPeer}, L{MalformedSignal} or L{RendezvousUnavailable}.
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

    def connect(offer: Offer) -> Deferred[Answer]:
        """
        Send C{offer} to the peer it is for (C{offer.to_key}, or the key
        C{offer.to_name} is bound to) and wait for its answer.

        C{offer.from_name} and C{offer.from_key} must be ours.

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
