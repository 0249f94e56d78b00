"""
What the hole puncher keeps of each session while it runs or stays
connected (L{Running}), and its counters (L{PuncherStats}).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from twisted_nat.bases import Base
from twisted_nat.punch.birthday import Prober
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


FIRST_ROUND = 0.02
"""Delay before the second round of PUNCHes; it doubles up to the interval."""


class Running:
    """
    A session with its timers and the Deferred its caller waits on, which
    is let go once fired: a connected session is kept for as long as its
    connection lasts, and nobody waits on it any more.

    @ivar ticker: the next round.
    @ivar grace: the end of the controlling peer's wait for a better path.
    @ivar pacer: when the pace lets held-back addresses go, between rounds.
    @ivar prober: the birthday method's probes, while the session probes.
    @ivar prober_timer: the next burst of probes.
    @ivar on_settled: told the base of the path in use once the session
        stops searching (None if it failed or was forgotten first).
    """

    __slots__ = (
        "deferred",
        "grace",
        "on_better_path",
        "on_settled",
        "pacer",
        "prober",
        "prober_timer",
        "rounds",
        "session",
        "ticker",
    )

    def __init__(
        self,
        session: PunchSession,
        on_better_path: Callable[[PunchResult], object] | None = None,
        prober: Prober | None = None,
        on_settled: Callable[[Base | None], object] | None = None,
    ) -> None:
        self.session = session
        self.rounds = 0
        self.deferred: Deferred[PunchResult] | None = Deferred()
        self.ticker: IDelayedCall | None = None
        self.grace: IDelayedCall | None = None
        self.pacer: IDelayedCall | None = None
        self.on_better_path = on_better_path
        self.prober = prober
        self.prober_timer: IDelayedCall | None = None
        self.on_settled = on_settled

    def round_delay(self, now: float) -> float:
        """
        How long until the next round.  The first rounds come quicker (20,
        40, 80, 160 ms): the peer starts punching half a rendezvous round
        trip before we do, and its first PUNCHes, sent before our session
        existed or before our NAT was open, need not cost a whole interval.
        The last round comes when time is up, not an interval after.
        """
        settings = self.session.settings
        delay = min(settings.interval, FIRST_ROUND * float(2 ** min(self.rounds, 8)))
        self.rounds += 1
        remaining = self.session.started + settings.timeout - now
        return max(0.0, min(delay, remaining))

    def schedule_pace(self, reactor: IReactorTime, pace: Callable[[], object]) -> None:
        """Addresses the pace held back go when it lets them, unless a round comes first."""
        due = self.session.next_pace
        if due is None or self.pacer is not None:
            return
        ticker = self.ticker
        if ticker is not None and ticker.active() and ticker.getTime() <= due:
            return
        self.pacer = reactor.callLater(max(0.0, due - reactor.seconds()), pace)

    def start_grace(self, reactor: IReactorTime, delay: float, over: Callable[[], object]) -> None:
        """A grace period, or a shorter one instead of a relay's longer one."""
        grace = self.grace
        if grace is not None and grace.active():
            if grace.getTime() <= reactor.seconds() + delay:
                return
            grace.cancel()
        self.grace = reactor.callLater(delay, over)

    def schedule_probe(self, reactor: IReactorTime, probe: Callable[[], object]) -> bool:
        """The next burst of the birthday method's probes, if probing goes on; whether it does."""
        due = self.session.next_probe
        if self.prober is None or due is None:
            return False
        self.prober_timer = reactor.callLater(max(0.0, due - reactor.seconds()), probe)
        return True

    def stop_probing(self, gone: bool) -> Prober | None:
        """
        Once probing is over, or the session is C{gone} (forgotten or
        failed): stop the probes; the prober stopped, if it was now.
        """
        prober = self.prober
        if prober is None or not (gone or self.session.next_probe is None):
            return None
        self.prober = None
        if self.prober_timer is not None and self.prober_timer.active():
            self.prober_timer.cancel()
        self.prober_timer = None
        return prober

    def settle(self, gone: bool) -> None:
        """Tell L{on_settled} the base of the path in use, once the search is over."""
        settled = self.on_settled
        if settled is not None and (gone or not self.session.searching):
            self.on_settled = None
            chosen = self.session.chosen if not gone else None
            settled(chosen[0] if chosen is not None else None)

    def cancel_timers(self) -> None:
        """Stop every timer of the session's search."""
        for timer in (self.ticker, self.grace, self.pacer, self.prober_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self.ticker = self.grace = self.pacer = self.prober_timer = None
