"""
What a service does when a path is lost, before and while it punches
again: our public address learnt anew, and the rendezvous made sure of.
A NAT that lost its bindings (a reboot) broke our connection to the
rendezvous too: the server's words are dropped until we send, and a
connection the server already reset is found dead only when we do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from twisted_nat.rendezvous import ISignaling, RendezvousClient
from twisted_nat.service.addresses import Addresses
from twisted_nat.service.waiting import both, within

REGISTERED_WAIT = 5.0
"""How long a new offer to a peer whose path was lost waits for the rendezvous to have us again."""


class Recovery:
    """
    @param signaling: our signalling channel now, if any.
    @param our_name: the name we are registered as now.
    @param connect: offer a connection to a peer by name (the service's).
    @param check_relays: make sure our relays still work (L{Relays.verify}).
    """

    def __init__(
        self,
        reactor: IReactorTime,
        addresses: Addresses,
        signaling: Callable[[], ISignaling | None],
        our_name: Callable[[], str | None],
        connect: Callable[[str], Deferred[Any]],
        check_relays: Callable[[], Deferred[None]] = lambda: succeed(None),
    ) -> None:
        self._reactor = reactor
        self._addresses = addresses
        self._signaling = signaling
        self._our_name = our_name
        self._connect = connect
        self._check_relays = check_relays

    def relearn(self) -> Deferred[None]:
        """
        Our public address again, our relays checked, and a word to the
        rendezvous (a lookup of our own name): it opens our NAT for the
        server's words again, or finds the connection dead, so that the
        client makes a new one, at once (L{RendezvousClient.verify}); fires
        once all are done, so that a new offer does not go out on a
        connection about to die, nor offer a relay the NAT cut us off from.
        """
        signaling, name = self._signaling(), self._our_name()
        verified: Deferred[Any] = succeed(None)
        if isinstance(signaling, RendezvousClient):
            verified = signaling.verify()
        elif signaling is not None and name is not None:
            signaling.lookup(name).addErrback(lambda _: None)
        relays = self._check_relays()
        return Deferred.fromCoroutine(both(both(verified, relays), self._addresses.refresh()))

    def connect_again(self, peer: str) -> Deferred[Any]:
        """Offer again to C{peer}, once the rendezvous has us (or after L{REGISTERED_WAIT})."""

        async def again() -> Any:
            signaling = self._signaling()
            if signaling is not None:
                await within(self._reactor, signaling.when_registered(), REGISTERED_WAIT)
            return await self._connect(peer)

        return Deferred.fromCoroutine(again())
