"""
L{ClusterNode}: one rendezvous server as a node among others that share
its peers through Redis.

The node has an id (random, made at start) and hears on the channel
C{twisted-nat:node:ID}.  Names are bound in Redis (L{RedisRegistry}); where
each key is connected is L{Presence}.  An offer for a key held by another
node is published on that node's channel (L{messages.OfferRequest}); that
node hands it to its connection as if a local peer had sent it, and
publishes the answer back on ours.  A publish that no node hears means the
node is gone: the sender is told at once, not after a timeout.

Everything heard on the channel is checked (L{messages.decode}) and
bounded: at most C{max_pending} offers from other nodes are under way at
once (more are answered busy), and as many of ours wait for replies.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.cluster import messages
from twisted_nat.cluster.address import RedisAddress
from twisted_nat.cluster.link import RedisLink
from twisted_nat.cluster.presence import PRESENCE_TTL, Presence
from twisted_nat.cluster.registry import PREFIX, RedisRegistry
from twisted_nat.errors import (
    MalformedSignal,
    PeerUnavailable,
    RegistryError,
    RendezvousBusy,
    RendezvousError,
    UnknownPeer,
)
from twisted_nat.limits import DropLog
from twisted_nat.rendezvous.interfaces import DEFAULT_RELAY_TIMEOUT
from twisted_nat.rendezvous.values import Answer, Offer
from twisted_nat.trust.keys import PeerKey

REPLY_MARGIN = 1.0
"""Seconds an offer through another node waits beyond that node's own relay timeout."""

DEFAULT_MAX_PENDING = 1_024

Deliver = Callable[[Offer, PeerKey, str], Deferred[Answer]]
Moved = Callable[[PeerKey, str | None], None]


def channel_of(node: str) -> str:
    return PREFIX + "node:" + node


def _word(failure: Failure) -> str:
    for word, error in messages.ERRORS.items():
        if failure.check(error):
            return word
    return "unavailable"


class ClusterNode(Service):
    """
    This server's part in the cluster: the registry to give its factory,
    and the L{twisted_nat.rendezvous.directory.ClusterNodes} it routes through.

    @param relay_timeout: the servers' relay timeout (all nodes alike).
    @param max_pending: offers of ours waiting for other nodes, and offers
        of other nodes under way here, each at most.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        address: RedisAddress,
        relay_timeout: float = DEFAULT_RELAY_TIMEOUT,
        max_pending: int = DEFAULT_MAX_PENDING,
        presence_ttl: float = PRESENCE_TTL,
        retry: tuple[float, float] = (1.0, 10.0),
    ) -> None:
        self.node = os.urandom(8).hex()
        self.reactor = reactor
        self.relay_timeout = relay_timeout
        self.max_pending = max_pending
        self.link = RedisLink(reactor, address, channel_of(self.node), self._heard, retry=retry)
        self.registry = RedisRegistry(self.link)
        self.presence = Presence(
            reactor, self.link, self.node, self._superseded, self._taken, presence_ttl
        )
        self.link.watch(self._up, self._down)
        self.drops = DropLog(self.log, reactor)
        self._waiting: dict[str, Deferred[Answer]] = {}
        self._serving = 0
        self._deliver: Deliver | None = None
        self._moved: Moved | None = None

    @property
    def up(self) -> bool:
        """Whether Redis is reachable now."""
        return self.link.up

    def status(self) -> dict[str, object]:
        return {
            "node": self.node,
            "redis": self.link.address.text,
            "redis_connected": self.link.up,
            "held": len(self.presence.held),
            "waiting": len(self._waiting),
            "dropped": dict(self.drops.counts),
        }

    # --- the service ---

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "Rendezvous node {node}: sharing names and peers through Redis at {address}",
            node=self.node,
            address=self.link.address.text,
        )
        self.link.startService()
        self.presence.start()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self.presence.stop()
        self._fail_waiting("this rendezvous node is stopping")
        return self.link.stopService()

    def _up(self) -> None:
        self.presence.reconcile()  # our entries again, after an outage

    def _down(self) -> None:
        self._fail_waiting("the rendezvous nodes' Redis is unreachable")

    def _fail_waiting(self, why: str) -> None:
        waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            waiter.errback(PeerUnavailable(why))

    # --- ClusterNodes, for the directory ---

    def serve(self, deliver: Deliver, moved: Moved) -> None:
        self._deliver, self._moved = deliver, moved

    def held(self, key: PeerKey) -> None:
        self.presence.hold(key)

    def dropped(self, key: PeerKey) -> None:
        self.presence.drop(key)

    def relay(self, offer: Offer, key: PeerKey, to: str) -> Deferred[Answer]:
        if not self.link.up:
            return defer.fail(
                PeerUnavailable(f"{to} is not connected here, and the other nodes are unreachable")
            )
        if len(self._waiting) >= self.max_pending:
            return defer.fail(RendezvousBusy("too many offers waiting for other nodes"))

        def located(node: str | None) -> Deferred[Answer]:
            if node is None or node == self.node:
                raise UnknownPeer(f"{to!r} is not connected")
            request = messages.OfferRequest(os.urandom(8).hex(), self.node, key, offer)
            waiter: Deferred[Answer] = Deferred()
            self._waiting[request.id] = waiter

            def heard_by(count: int) -> None:
                if count == 0 and self._waiting.pop(request.id, None) is waiter:
                    waiter.errback(PeerUnavailable(f"the rendezvous node holding {to} is gone"))

            def unsent(failure: Failure) -> None:
                if self._waiting.pop(request.id, None) is waiter:
                    waiter.errback(PeerUnavailable(f"cannot reach {to}'s node: {failure.value}"))

            published = self.link.publish(channel_of(node), messages.encode(request))
            published.addCallbacks(heard_by, unsent)
            timeout = self.relay_timeout + REPLY_MARGIN

            def timed_out(result: Answer | Failure, timeout: float) -> Answer | Failure:
                self._waiting.pop(request.id, None)
                if isinstance(result, Failure) and result.check(defer.CancelledError):
                    return Failure(PeerUnavailable(f"{to} did not answer within {timeout:g} s"))
                return result

            return waiter.addTimeout(timeout, self.reactor, onTimeoutCancel=timed_out)

        def unlocated(failure: Failure) -> Failure:
            if failure.check(RegistryError):
                return Failure(PeerUnavailable(f"cannot find {to}'s node: {failure.value}"))
            return failure

        return self.presence.where(key).addErrback(unlocated).addCallback(located)

    # --- what other nodes say ---

    def _heard(self, text: str | bytes) -> None:
        try:
            message = messages.decode(text)
        except MalformedSignal as e:
            self.drops.drop("malformed", "Refused a message from Redis: {why}", why=e)
            return
        if isinstance(message, messages.OfferRequest):
            self._serve(message)
        elif isinstance(message, messages.OfferReply):
            waiter = self._waiting.pop(message.id, None)
            if waiter is None:
                self.drops.drop("unexpected", "A reply to no offer of ours: {id}", id=message.id)
                return
            try:
                waiter.callback(message.result())
            except RendezvousError as e:
                waiter.errback(e)
        elif self._moved is not None and message.key in self.presence.held:
            self.presence.held.discard(message.key)
            self._moved(message.key, message.node)

    def _serve(self, request: messages.OfferRequest) -> None:
        if self._deliver is None or self._serving >= self.max_pending:
            self._reply(request, messages.OfferReply(request.id, None, "busy", "node busy"))
            return
        self._serving += 1

        def answered(answer: Answer) -> None:
            self._reply(request, messages.OfferReply(request.id, answer))

        def refused(failure: Failure) -> None:
            detail = str(failure.value)[: messages.MAX_DETAIL]
            self._reply(request, messages.OfferReply(request.id, None, _word(failure), detail))

        def done(result: object) -> None:
            self._serving -= 1

        d = defer.maybeDeferred(self._deliver, request.offer, request.key, request.reply_to)
        d.addCallbacks(answered, refused).addBoth(done)

    def _reply(self, request: messages.OfferRequest, reply: messages.OfferReply) -> None:
        d = self.link.publish(channel_of(request.reply_to), messages.encode(reply))
        d.addErrback(lambda failure: self.drops.drop("unsent", "A reply was lost: {e}", e=failure))

    def _superseded(self, key: PeerKey, node: str) -> None:
        d = self.link.publish(channel_of(node), messages.encode(messages.Moved(key, self.node)))
        d.addErrback(lambda failure: None)  # its entry expires; we hold the key now

    def _taken(self, key: PeerKey) -> None:
        if self._moved is not None:
            self._moved(key, None)
