"""
What QUIC and the peer connection under it tell each other about the path.

QUIC's own idle timeout is long (a lost path is punched again under it),
so a peer that is gone for good would hold its streams for that long.  The
peer connection knows sooner: its liveness checks find a dead path in
seconds and it says "reconnecting" until a new punch is through.
L{PathWatch} ends the QUIC connection when that has lasted longer than
C{StreamSettings.path_lost_timeout}, and feeds QUIC's traffic to the
liveness checks (QUIC datagrams bypass the connection's own C{write}), so
that a transfer whose peer went silent is checked at once, not at the next
keep-alive probe.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from twisted_nat.connection import PeerConnection
from twisted_nat.keepalive.checks import LivenessChecks

FEED_INTERVAL = 0.05
"""At most one report of QUIC traffic each way to the liveness checks per this many seconds."""


class PathWatch:
    """
    @param gone: called once the connection has been reconnecting for
        C{timeout} seconds, with how long that was.
    """

    __slots__ = ("_connection", "_fed", "_gone", "_reactor", "_timeout", "_timer")

    def __init__(
        self,
        reactor: IReactorTime,
        connection: PeerConnection,
        timeout: float,
        gone: Callable[[float], object],
    ) -> None:
        self._reactor = reactor
        self._connection = connection
        self._timeout = timeout
        self._gone = gone
        self._timer: IDelayedCall | None = None
        self._fed = [-FEED_INTERVAL, -FEED_INTERVAL]
        """When QUIC's traffic was last reported to the liveness checks: sent, heard."""
        connection.on_state_change(self._state_changed)
        self._state_changed(connection)

    def _state_changed(self, connection: PeerConnection) -> None:
        if connection.state == "reconnecting":
            if self._timer is None:
                self._timer = self._reactor.callLater(self._timeout, self._expired)
        else:
            self.stop()

    def _expired(self) -> None:
        self._timer = None
        self._gone(self._timeout)

    def stop(self) -> None:
        """No timer any more (until the connection reconnects again)."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def sent(self) -> None:
        """QUIC sent the peer a datagram."""
        liveness = self._due(0)
        if liveness is not None:
            liveness.sent()

    def heard(self) -> None:
        """A QUIC datagram from the peer authenticated."""
        liveness = self._due(1)
        if liveness is not None:
            liveness.heard()

    def _due(self, way: int) -> LivenessChecks | None:
        """The liveness checks, if a report that way is due (one per L{FEED_INTERVAL})."""
        now = self._reactor.seconds()
        if now - self._fed[way] < FEED_INTERVAL:
            return None
        self._fed[way] = now
        return self._connection.liveness
