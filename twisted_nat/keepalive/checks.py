"""
L{LivenessChecks}: the I/O of L{Freshness} on one kept path.  It sends the
checks its decision object asks for, keeps one timer for it, counts the
checks' fate in the path's loss and round trip, and tells its owner when
the state changes and when the path is lost.  It decides nothing itself.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from twisted_nat.keepalive.freshness import CheckSettings, Freshness, PathState
from twisted_nat.keepalive.machine import KeepAliveMachine
from twisted_nat.keepalive.timers import Now, Schedule, TimerHandle

__all__ = ["LivenessChecks"]


def _ignore(state: PathState) -> None:
    pass


class LivenessChecks:
    """
    Liveness checks next to a path's L{KeepAliveMachine}: the same
    KEEP_ALIVE messages, each with a fresh transaction id, sent every
    C{settings.interval} while the path is in doubt.

    @param send_check: sends one check; returns its id, as the machine's
        C{send_probe} does.
    @param machine: the path's keep-alive machine, whose round-trip
        estimate sets the checks' patience, and whose loss and round trip
        estimators count the checks too, so that a link's quality speaks of
        the time the application had the path in use.
    @param on_lost: called once when the checks give up on the path.
    @param on_state: called with the new state whenever it changes.
    """

    __slots__ = (
        "_freshness",
        "_machine",
        "_now",
        "_on_lost",
        "_on_state",
        "_schedule",
        "_send_check",
        "_stopped",
        "_timer",
        "_timer_at",
    )

    log = Logger()

    def __init__(
        self,
        settings: CheckSettings,
        *,
        send_check: Callable[[], object],
        machine: KeepAliveMachine,
        schedule: Schedule,
        now: Now,
        on_lost: Callable[[], object],
        on_state: Callable[[PathState], object] = _ignore,
    ) -> None:
        self._freshness = Freshness(settings, machine.rtt.rto)
        self._send_check = send_check
        self._machine = machine
        self._schedule = schedule
        self._now = now
        self._on_lost = on_lost
        self._on_state = on_state
        self._timer: TimerHandle | None = None
        self._timer_at = 0.0
        self._stopped = False

    def __repr__(self) -> str:
        return f"<LivenessChecks {self._freshness!r}>"

    @property
    def state(self) -> PathState:
        return self._freshness.state

    @property
    def freshness(self) -> Freshness:
        """The decisions, for inspection."""
        return self._freshness

    # --- events from the path's owner ---

    def sent(self) -> None:
        """A datagram to the peer that should bring an answer: the application's, or a probe."""
        if self._stopped:
            return
        now = self._now()
        self._freshness.sent(now)
        self._arm(now)

    def heard(self) -> None:
        """Fresh authenticated data came from the peer."""
        if self._stopped:
            return
        now = self._now()
        self._freshness.heard(now)
        self._arm(now)

    def answered(self) -> None:
        """The peer answered one of the machine's keep-alive probes."""
        if not self._stopped:
            self._changed(self._freshness.answered(self._now()))

    def check_answered(self, check_id: object) -> bool:
        """An ACK for C{check_id}: whether it was one of our checks in flight."""
        if self._stopped:
            return False
        freshness = self._freshness
        before = freshness.state
        sample = freshness.check_answered(check_id, self._now())
        if sample is None:
            return False
        self._machine.loss.record(True)
        if sample >= 0:
            self._machine.rtt.update(sample)
        self._changed(freshness.state is not before)
        return True

    def stop(self) -> None:
        """No more checks nor callbacks."""
        self._stopped = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # --- the timer ---

    def _arm(self, now: float) -> None:
        wake = self._freshness.wake()
        if wake is None:
            return
        timer = self._timer
        if timer is not None and timer.active():
            if self._timer_at <= wake:
                return  # it wakes first, finds nothing due, and sleeps on
            timer.cancel()
        self._timer_at = wake
        self._timer = self._schedule(max(0.0, wake - now), self._wake)

    def _wake(self) -> None:
        self._timer = None
        if self._stopped:
            return
        now = self._now()
        freshness = self._freshness
        freshness.set_patience(self._machine.rtt.rto)
        tick = freshness.tick(now)
        for _ in range(tick.expired):
            self._machine.loss.record(False)
        if tick.lost:
            self.stop()
            self.log.debug(
                "no answer to liveness checks for {seconds:.1f} s: the path is lost",
                seconds=freshness.lost_after,
            )
            self._call(self._on_state, PathState.LOST)
            self._call(self._on_lost)
            return
        if tick.changed:
            self.log.debug("no answer from the peer: checking the path")
            self._call(self._on_state, freshness.state)
        if tick.check:
            try:
                check_id = self._send_check()
            except Exception:
                self.log.failure("sending a liveness check failed")
                check_id = None  # unanswerable, so it will count as lost
            if self._stopped:
                return
            freshness.checked(check_id, now)
        self._arm(now)

    def _changed(self, changed: bool) -> None:
        if changed:
            self.log.debug("the peer answered: the path works again")
            self._call(self._on_state, self._freshness.state)

    def _call(self, function: Callable[..., object], *args: object) -> None:
        """Call the owner back; its bugs are logged, never left to corrupt our state."""
        try:
            function(*args)
        except Exception:
            self.log.failure("liveness callback {function!r} failed", function=function)
