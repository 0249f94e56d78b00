"""
L{FailoverEndpoint}: one client endpoint made of several rendezvous nodes,
for a peer that stays registered on one of them and moves to another when
its node goes away.

Each connection attempt tries the nodes in turn, each for at most
C{attempt_timeout} seconds, and succeeds with the first that accepts;
only when all fail does the attempt fail, and the owner's reconnection
backoff (C{ClientService}'s) decides when to try again.  After a
connection is lost (L{lost}), the next attempt starts with the node after
the one that was lost, so that a node that went away costs one failed
attempt at most once per round.  A host name with several addresses is
already tried address by address by Twisted's C{HostnameEndpoint}.
"""

from __future__ import annotations

from collections.abc import Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

DEFAULT_ATTEMPT_TIMEOUT = 5.0


@implementer(IStreamClientEndpoint)
class FailoverEndpoint:
    """
    Connects to the first of C{endpoints} that accepts.

    @param endpoints: (description, endpoint) pairs, in the order given.
    @param clock: times each node's attempt out.
    @ivar current: the description of the node connected last, or None.
    """

    def __init__(
        self,
        endpoints: Sequence[tuple[str, IStreamClientEndpoint]],
        clock: IReactorTime,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT,
    ) -> None:
        if not endpoints:
            raise ValueError("a failover endpoint needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.clock = clock
        self.attempt_timeout = attempt_timeout
        self.current: str | None = None
        self._index: int | None = None
        self._start = 0

    def lost(self) -> None:
        """The connection made last is gone: start the next attempt with the next node."""
        if self._index is not None:
            self._start = (self._index + 1) % len(self.endpoints)
            self._index = None
            self.current = None

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        count = len(self.endpoints)
        order = [(self._start + i) % count for i in range(count)]
        return defer.ensureDeferred(self._try(order, protocolFactory))

    async def _try(self, order: list[int], factory: IProtocolFactory) -> IProtocol:
        failure: Failure | None = None
        for index in order:
            description, endpoint = self.endpoints[index]
            attempt: Deferred[IProtocol] = endpoint.connect(factory)
            attempt.addTimeout(self.attempt_timeout, self.clock)
            try:
                protocol = await attempt
            except defer.CancelledError:
                raise  # the whole attempt was cancelled: stopping, not failing
            except Exception:
                failure = Failure()
                continue
            self._index, self.current = index, description
            return protocol
        assert failure is not None
        failure.raiseException()
        raise AssertionError("unreachable")
