"""
A peer's connection to the rendezvous server as a protocol: the commands it
sends (signed registrations, lookups, offers) and the offers it answers.
Deciding when to register and reconnecting belong to
L{twisted_nat.rendezvous.client.RendezvousClient}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionClosed
from twisted.internet.protocol import connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

from twisted_nat.errors import MalformedSignal, RendezvousError, RendezvousUnavailable
from twisted_nat.rendezvous.protocol import (
    Challenge,
    Connect,
    DeliverOffer,
    Lookup,
    Register,
    Release,
    SignalingAMP,
    Superseded,
    registration_transcript,
)
from twisted_nat.rendezvous.values import Answer, Offer
from twisted_nat.trust.keys import Identity, PeerKey


def _translate(failure: Failure) -> Failure:
    """
    A failed call as one of our exceptions: a dropped connection means the
    server is unavailable, whatever the operating system called it.
    """
    if failure.check(RendezvousError):
        return failure
    if failure.check(ConnectionClosed):
        return Failure(RendezvousUnavailable("the connection to the rendezvous server was lost"))
    if failure.check(amp.AmpError):  # an error code we do not know, an unknown command
        return Failure(RendezvousError(f"the rendezvous server failed: {failure.value}"))
    return failure


class RendezvousClientProtocol(SignalingAMP):
    """
    A peer's connection to the rendezvous server.

    It only speaks the protocol; deciding when to register, answering
    offers and reconnecting belong to the owner, which it tells about its
    connection through C{on_connected} and C{on_lost}.
    """

    def __init__(
        self,
        answer_offer: Callable[[Offer], Deferred[Answer]],
        on_connected: Callable[[RendezvousClientProtocol], None],
        on_lost: Callable[[RendezvousClientProtocol, Failure], None],
    ) -> None:
        super().__init__()
        self._answer_offer = answer_offer
        self._on_connected = on_connected
        self._on_lost = on_lost
        self.connected = False
        self.superseded: str | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connected = True
        self._on_connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        # The owner hears first, so that whoever reacts to a call failing
        # below already finds us disconnected.
        self._on_lost(self, reason)
        super().connectionLost(reason)

    @DeliverOffer.responder
    def deliver_offer(self, offer: Offer) -> Deferred[dict[str, object]]:
        def response(answer: Answer) -> dict[str, object]:
            return {"answer": answer}

        return self._answer_offer(offer).addCallback(response)

    @Superseded.responder
    def superseded_by(self, reason: str) -> dict[str, object]:
        """The server is about to close us: a newer connection holds our key."""
        self.superseded = reason[:200]
        return {}

    def _signed(self, command: type[amp.Command], name: str, identity: Identity) -> Deferred[None]:
        """Ask for a challenge, then send C{command} with our signature over it."""
        action = command.__name__.lower()

        def challenged(response: dict[str, Any]) -> Deferred[Any]:
            proof = registration_transcript(response["server"], response["nonce"], action, name)
            sent: Deferred[Any] = self.callRemote(
                command, name=name, key=identity.public, signature=identity.sign(proof)
            )
            return sent

        d = self.callRemote(Challenge).addCallback(challenged)
        d.addCallback(lambda response: None)
        return d.addErrback(_translate)  # type: ignore[no-any-return]

    def register(self, name: str, identity: Identity) -> Deferred[None]:
        """Register C{name} for our key; fails with our exceptions only."""
        return self._signed(Register, name, identity)

    def release(self, name: str, identity: Identity) -> Deferred[None]:
        """Unbind C{name} from our key for good; fails with our exceptions only."""
        return self._signed(Release, name, identity)

    def lookup(self, name: str) -> Deferred[PeerKey]:
        """The key C{name} is bound to; fails with our exceptions only."""
        d = self.callRemote(Lookup, name=name).addCallback(lambda response: response["key"])
        return d.addErrback(_translate)  # type: ignore[no-any-return]

    def connect(self, offer: Offer) -> Deferred[Answer]:
        """Send C{offer} through the server; fails with our exceptions only."""

        def answered(response: dict[str, Any]) -> Answer:
            answer = response["answer"]
            assert isinstance(answer, Answer)
            if answer.session_id != offer.session_id:
                raise MalformedSignal("the answer is for another session")
            return answer

        d = self.callRemote(Connect, offer=offer)
        return d.addCallback(answered).addErrback(_translate)  # type: ignore[no-any-return]
