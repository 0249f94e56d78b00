"""
Handing an offer to the connection of the peer it is for, and its answer
back: for an offer from a connection of this server, and for one another
rendezvous node sends (L{twisted_nat.cluster}).  One path for both, so that
the limits and checks are the same whoever sent the offer.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionClosed
from twisted.python.failure import Failure

from twisted_nat.errors import MalformedSignal, PeerUnavailable, RendezvousBusy, UnknownPeer
from twisted_nat.rendezvous.directory import Cluster, PeerDirectory
from twisted_nat.rendezvous.protocol import DeliverOffer
from twisted_nat.rendezvous.values import Answer, Offer
from twisted_nat.trust.keys import PeerKey


class Target(Hashable, Protocol):
    """What delivering needs of the recipient's connection (the server's protocol)."""

    key: PeerKey | None
    transport: Any

    @property
    def address(self) -> str | None: ...

    def callRemote(self, commandType: Any, *a: Any, **kw: Any) -> Any: ...

    def forget_question(self, question: Deferred[Any]) -> None: ...


def deliver(
    directory: PeerDirectory[Any], sender: Hashable, target: Target, offer: Offer, to: str
) -> Deferred[Answer]:
    """
    Send C{offer} to C{target} and return its answer, with the address
    C{target} connects from as the answer's C{seen_from}.

    It waits at most the directory's relay timeout, and counts against the
    offers waiting for answers (from C{sender}, for C{target}, in all).

    @raise RendezvousBusy: at once, when those are at their limits.
    @return: fails with L{PeerUnavailable} whatever went wrong after that.
    """
    key = target.key
    pending = directory.pending
    refusal = pending.reserve(sender, target)
    if refusal is not None:
        directory.stats.refused_busy += 1
        raise RendezvousBusy(refusal)
    timeout = directory.relay_timeout
    relay: Deferred[dict[str, Any]] = target.callRemote(DeliverOffer, offer=offer)
    relay.addTimeout(timeout, directory.reactor)

    def settled(result: object) -> object:
        pending.release(sender, target)
        return result

    relay.addBoth(settled)

    def answered(response: dict[str, Any]) -> Answer:
        answer: Answer = response["answer"]
        if answer.session_id != offer.session_id or answer.from_key != key:
            raise PeerUnavailable(f"{to} answered another session, or with another key")
        directory.stats.offers_relayed += 1
        return attrs.evolve(answer, seen_from=target.address)

    def failed(failure: Failure) -> Failure:
        directory.stats.relays_failed += 1
        if failure.check(PeerUnavailable):
            return failure
        if failure.check(defer.TimeoutError):
            target.forget_question(relay)
            error = PeerUnavailable(f"{to} did not answer within {timeout:g} s")
        elif failure.check(MalformedSignal):
            error = PeerUnavailable(f"{to} sent a malformed answer")
        elif failure.check(ConnectionClosed):
            error = PeerUnavailable(f"{to} went away before answering")
        else:
            error = PeerUnavailable(f"{to} could not answer")
        return Failure(error)

    return relay.addCallback(answered).addErrback(failed)


def through_node(
    directory: PeerDirectory[Any],
    sender: Hashable,
    cluster: Cluster,
    offer: Offer,
    key: PeerKey,
    to: str,
) -> Deferred[Answer]:
    """
    Relay C{offer} through the rendezvous node that holds C{key}'s
    connection, counting against the offers C{sender} has waiting.

    @raise RendezvousBusy: at once, when those are at their limits.
    @return: fails with L{UnknownPeer} when no node holds C{key}, else with
        L{PeerUnavailable} or L{RendezvousBusy} as the other node says.
    """
    pending = directory.pending
    remote = ("node", key)
    refusal = pending.reserve(sender, remote)
    if refusal is not None:
        directory.stats.refused_busy += 1
        raise RendezvousBusy(refusal)

    def settled(result: object) -> object:
        pending.release(sender, remote)
        return result

    def checked(answer: Answer) -> Answer:
        if answer.session_id != offer.session_id or answer.from_key != key:
            raise PeerUnavailable(f"{to} answered another session, or with another key")
        directory.stats.offers_relayed += 1
        directory.stats.offers_routed += 1
        return answer

    def failed(failure: Failure) -> Failure:
        if failure.check(UnknownPeer, RendezvousBusy):
            return failure
        directory.stats.relays_failed += 1
        if failure.check(PeerUnavailable):
            return failure
        return Failure(PeerUnavailable(f"{to} could not answer"))

    d = cluster.relay(offer, key, to).addBoth(settled)
    return d.addCallbacks(checked, failed)
