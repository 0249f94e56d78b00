"""
What a service tells whoever watches it: an application's interface, a
monitoring exporter, a test harness.  Watchers implement L{IPeerEvents} (any
subset of it, by subclassing L{PeerEventsBase}) and are added with
L{twisted_nat.service.NATTraversalService.watch}.
"""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from twisted_nat.connection import PeerConnection
from twisted_nat.nat import NATBehavior
from twisted_nat.punch import PunchResult


class IPeerEvents(Interface):
    """The moments of a service's life that a watcher may care about."""

    def nat_found(behavior: NATBehavior) -> None:
        """Behaviour discovery found what our NAT does."""

    def offer_received(peer: str) -> None:
        """C{peer} offered a connection; the punch starts now."""

    def connected(
        connection: PeerConnection, result: PunchResult, offerer: bool, again: bool
    ) -> None:
        """
        A punch succeeded: C{connection} is new, or (C{again}) an existing
        one rebound to a new path after it was lost.
        """

    def path_lost(connection: PeerConnection, reason: Failure) -> None:
        """Keep-alive gave up on C{connection}'s path; a new punch follows."""

    def punch_failed(peer: str, offerer: bool, reason: Failure) -> None:
        """A punch the service started itself (an answer, or C{connect_to}) failed."""


@implementer(IPeerEvents)
class PeerEventsBase:
    """A watcher that ignores everything: subclass it and override what you need."""

    def nat_found(self, behavior: NATBehavior) -> None:
        pass

    def offer_received(self, peer: str) -> None:
        pass

    def connected(
        self, connection: PeerConnection, result: PunchResult, offerer: bool, again: bool
    ) -> None:
        pass

    def path_lost(self, connection: PeerConnection, reason: Failure) -> None:
        pass

    def punch_failed(self, peer: str, offerer: bool, reason: Failure) -> None:
        pass


@implementer(IPeerEvents)
class PeerEvents:
    """
    The service's side: tells every watcher, in the order they were added.
    A watcher that raises is logged and does not stop the others, nor the
    service.
    """

    log = Logger()

    def __init__(self) -> None:
        self.watchers: list[IPeerEvents] = []

    def nat_found(self, behavior: NATBehavior) -> None:
        self._tell("nat_found", behavior)

    def offer_received(self, peer: str) -> None:
        self._tell("offer_received", peer)

    def connected(
        self, connection: PeerConnection, result: PunchResult, offerer: bool, again: bool
    ) -> None:
        self._tell("connected", connection, result, offerer, again)

    def path_lost(self, connection: PeerConnection, reason: Failure) -> None:
        self._tell("path_lost", connection, reason)

    def punch_failed(self, peer: str, offerer: bool, reason: Failure) -> None:
        self._tell("punch_failed", peer, offerer, reason)

    def _tell(self, event: str, *args: object) -> None:
        for watcher in self.watchers:
            try:
                getattr(watcher, event)(*args)
            except Exception:
                self.log.failure("a watcher of the service failed on {event}", event=event)
