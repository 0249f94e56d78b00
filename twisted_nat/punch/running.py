"""
What the hole puncher keeps of each session while it runs or stays
connected (L{Running}), and its counters (L{PuncherStats}).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from twisted_nat.punch.session import PunchSession
from twisted_nat.punch.values import PunchResult


@attrs.define
class PuncherStats:
    """Counters of the punch traffic; every dropped datagram lands in one."""

    received: int = 0
    dropped_malformed: int = 0
    dropped_unknown_session: int = 0
    dropped_bad_mac: int = 0
    dropped_off_path: int = 0
    """Authenticated, but from where it proves nothing: an ACK or CONFIRM off its path."""
    unsendable: int = 0
    probes_sent: int = 0


class Running:
    """
    A session with its timers and the Deferred its caller waits on, which
    is let go once fired: a connected session is kept for as long as its
    connection lasts, and nobody waits on it any more.
    """

    __slots__ = ("deferred", "grace", "on_better_path", "rounds", "session", "ticker")

    def __init__(
        self,
        session: PunchSession,
        on_better_path: Callable[[PunchResult], object] | None = None,
    ) -> None:
        self.session = session
        self.rounds = 0
        self.deferred: Deferred[PunchResult] | None = Deferred()
        self.ticker: IDelayedCall | None = None
        self.grace: IDelayedCall | None = None
        self.on_better_path = on_better_path
