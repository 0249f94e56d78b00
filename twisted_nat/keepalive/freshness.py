"""
L{Freshness}: when a connection in use should check its path at once, and
when those checks say the path is gone.  A pure decision object: every
event and every question carries the time, so it is tested with plain
numbers and no clock.

Keep-alive alone (L{twisted_nat.keepalive.machine}) finds a broken path only
at its next probe, up to an interval (25 s) later, and gives up after
several timeouts more.  An application that sends meanwhile loses all of
it.  So, as ICE consent freshness (RFC 7675) and Tailscale's ping on
traffic do, the moment the application has sent and nothing authenticated
has come back for about a second (or a keep-alive probe has gone that long
unanswered, or the peer's flow of data stopped), liveness checks go out at
a short, fixed interval; the first answer ends them, and a few seconds
without one declare the path lost, so its owner punches again.
"""

from __future__ import annotations

import enum

import attrs

from twisted_nat.keepalive.timers import SLACK, check_seconds

__all__ = ["CheckSettings", "Freshness", "PathState", "Tick"]


def _seconds(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    check_seconds(attribute.name, value)


class PathState(enum.Enum):
    """What the checks say of a path."""

    HEALTHY = "healthy"
    """Answers come back, or nothing was sent that expects one."""
    CHECKING = "checking"
    """Nothing authenticated came back for a while: checks are out."""
    LOST = "lost"
    """The checks went unanswered for too long: the path is gone."""


@attrs.frozen
class CheckSettings:
    """
    @ivar enabled: check a path in use at once when it goes quiet; without
        it, only keep-alive's own timeouts find a broken path.
    @ivar quiet: seconds after a datagram of ours (application data or a
        keep-alive probe) with nothing authenticated back, before checks
        start; never less than the path's retransmission timeout.
    @ivar interval: seconds between checks: at most C{1 / interval} checks
        a second per connection, and only while checking.
    @ivar lost_after: seconds of checks without an answer before the path
        is declared lost; never less than two retransmission timeouts.
    """

    enabled: bool = True
    quiet: float = attrs.field(default=1.0, validator=_seconds)
    interval: float = attrs.field(default=0.25, validator=_seconds)
    lost_after: float = attrs.field(default=2.0, validator=_seconds)


@attrs.frozen
class Tick:
    """
    What L{Freshness.tick} asks its owner to do now.

    @ivar check: send one check (and report its id to L{Freshness.checked}).
    @ivar lost: the path is lost: stop, and punch again.
    @ivar expired: checks given up on (unanswered within their timeout, or
        still unanswered when the path is lost), for the loss count.
    @ivar changed: L{Freshness.state} changed in this tick.
    """

    check: bool = False
    lost: bool = False
    expired: int = 0
    changed: bool = False


NOTHING = Tick()


class Freshness:
    """
    The liveness checks of one path.

    The owner reports what it sends that expects an answer (L{sent}: the
    application's data, its keep-alive probes), authenticated data from
    the peer (L{heard}), ACKs to its own keep-alive probes (L{answered})
    and to checks (L{check_answered}), and calls L{tick} at L{wake}.
    Checks start C{quiet} after the first datagram of ours that nothing
    authenticated followed, or when the peer's flow of data stops (see
    L{heard}).

    Only an ACK to one of our own fresh probes or checks proves that our
    datagrams still arrive (RFC 7675 counts only responses to fresh
    requests): the peer's data stops a quiet spell from starting checks,
    but never ends checks under way.

    Checks start silently: one goes out at C{quiet}, and if it is answered
    within one check interval (a one-way flow whose peer sends nothing back
    gets this once per quiet spell) the state never leaves
    L{PathState.HEALTHY}.  From the second check on the state is
    L{PathState.CHECKING}, until an answer (L{PathState.HEALTHY}) or
    C{lost_after} from the first check (L{PathState.LOST}, final).

    @param patience: the path's retransmission timeout, which raises
        C{quiet}, a check's timeout, and half of C{lost_after}, on a slow
        path; L{set_patience} updates it.
    """

    __slots__ = (
        "_checking_since",
        "_checks",
        "_due",
        "_in_flight",
        "_last_check",
        "_last_data",
        "_patience",
        "_settings",
        "_state",
    )

    def __init__(self, settings: CheckSettings, patience: float = 0.0) -> None:
        self._settings = settings
        self._patience = patience
        self._state = PathState.HEALTHY
        # When checks start unless something authenticated arrives first.
        self._due: float | None = None
        # When the peer's last data arrived, for the gaps of its flow.
        self._last_data: float | None = None
        self._checking_since: float | None = None
        self._last_check = 0.0
        self._checks = 0
        # (check id, send time) in send order: at most about
        # timeout / interval + 1 entries.
        self._in_flight: tuple[tuple[object, float], ...] = ()

    def __repr__(self) -> str:
        return f"<Freshness {self._state.value} checks={self._checks}>"

    @property
    def state(self) -> PathState:
        return self._state

    @property
    def checks_sent(self) -> int:
        """Checks sent in the current spell of checking (0 when none is under way)."""
        return self._checks

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def set_patience(self, rto: float) -> None:
        """The path's retransmission timeout changed (a new round-trip sample)."""
        self._patience = rto

    @property
    def quiet(self) -> float:
        return max(self._settings.quiet, self._patience)

    @property
    def lost_after(self) -> float:
        return max(self._settings.lost_after, 2 * self._patience)

    # --- events ---

    def sent(self, now: float) -> None:
        """We sent the peer something that should bring an answer back."""
        if self._checking_since is None:
            due = now + self.quiet
            if self._due is None or due < self._due:
                self._due = due

    def heard(self, now: float) -> None:
        """
        Fresh authenticated data came from the peer: no need to check now,
        unless checking already.  Its flow is expected to go on: if
        nothing authenticated follows for twice the last gap between its
        datagrams (at least C{quiet}), one check goes out, since a NAT of
        ours that lost its bindings silences a flow towards us, and only
        our own datagram can open it again.
        """
        previous, self._last_data = self._last_data, now
        if self._checking_since is None:
            self._due = None if previous is None else now + max(self.quiet, 2 * (now - previous))

    def answered(self, now: float) -> bool:
        """
        An ACK to one of our own fresh probes: the path works both ways.

        @return: whether L{state} changed.
        """
        if self._state is PathState.LOST:
            return False
        changed = self._state is not PathState.HEALTHY
        self._state = PathState.HEALTHY
        self._due = None
        self._checking_since = None
        self._checks = 0
        return changed

    def check_answered(self, check_id: object, now: float) -> float | None:
        """
        An ACK to C{check_id}: if it is a check in flight, its round trip
        (and L{answered} is implied); else C{None}, and nothing changes.
        """
        if self._state is PathState.LOST:
            return None
        for index, (candidate, sent) in enumerate(self._in_flight):
            if candidate == check_id:
                self._in_flight = self._in_flight[:index] + self._in_flight[index + 1 :]
                self.answered(now)
                return now - sent
        return None

    def checked(self, check_id: object, now: float) -> None:
        """The check L{tick} asked for went out with C{check_id}."""
        self._in_flight += ((check_id, now),)
        self._last_check = now
        self._checks += 1

    # --- time ---

    def tick(self, now: float) -> Tick:
        """What to do at C{now} (call it at L{wake}, or any time)."""
        if self._state is PathState.LOST:
            return NOTHING
        expired = self._expire(now)
        before = self._state
        if self._checking_since is None:
            if self._due is None or now + SLACK < self._due:
                return Tick(expired=expired) if expired else NOTHING
            self._checking_since = now
            self._checks = 0
        elif now + SLACK >= self._checking_since + self.lost_after:
            # Checks still in flight are as unanswered as the rest.
            expired += len(self._in_flight)
            self._state = PathState.LOST
            self._in_flight = ()
            return Tick(lost=True, expired=expired, changed=True)
        check = self._checks == 0 or now + SLACK >= self._last_check + self._settings.interval
        if check and self._checks >= 1:
            self._state = PathState.CHECKING
        return Tick(check=check, expired=expired, changed=self._state is not before)

    def wake(self) -> float | None:
        """When L{tick} next has something to do, or C{None} for never (until an event)."""
        if self._state is PathState.LOST:
            return None
        times = []
        if self._in_flight:
            times.append(self._in_flight[0][1] + self.quiet)
        if self._checking_since is not None:
            times.append(self._last_check + self._settings.interval)
            times.append(self._checking_since + self.lost_after)
        elif self._due is not None:
            times.append(self._due)
        return min(times) if times else None

    def _expire(self, now: float) -> int:
        """Give up on the checks unanswered for a check timeout (C{quiet})."""
        expired = 0
        while self._in_flight and self._in_flight[0][1] + self.quiet <= now + SLACK:
            self._in_flight = self._in_flight[1:]
            expired += 1
        return expired
