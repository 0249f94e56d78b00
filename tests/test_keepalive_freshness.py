"""
L{Freshness}, the decision of when a path in use is checked and when it is
lost, with plain times; and L{LivenessChecks}, its I/O, on a C{task.Clock}.
"""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from twisted_nat.keepalive import KeepAliveMachine, reactor_callables
from twisted_nat.keepalive.checks import LivenessChecks
from twisted_nat.keepalive.freshness import CheckSettings, Freshness, PathState, Tick

SETTINGS = CheckSettings(quiet=1.0, interval=0.25, lost_after=2.0)


def run(freshness: Freshness, until: float, start: float = 0.0) -> list[tuple[float, str]]:
    """Tick at every wake-up up to C{until}; what happened, and when."""
    happened: list[tuple[float, str]] = []
    now = start
    check = 0
    while True:
        wake = freshness.wake()
        if wake is None or wake > until:
            return happened
        now = max(now, wake)
        tick = freshness.tick(now)
        happened.extend((now, "expired") for _ in range(tick.expired))
        if tick.lost:
            happened.append((now, "lost"))
            return happened
        if tick.changed:
            happened.append((now, freshness.state.value))
        if tick.check:
            check += 1
            freshness.checked(f"c{check}", now)
            happened.append((now, "check"))


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        CheckSettings(interval=0)
    with pytest.raises(ValueError):
        CheckSettings(quiet=float("inf"))
    with pytest.raises(ValueError):
        CheckSettings(lost_after=-1)


def test_idle_path_is_never_checked() -> None:
    freshness = Freshness(SETTINGS)
    assert freshness.wake() is None
    assert freshness.tick(100.0).check is False
    assert freshness.state is PathState.HEALTHY


def test_answer_within_quiet_spell_sends_no_check() -> None:
    freshness = Freshness(SETTINGS)
    freshness.sent(10.0)
    assert freshness.wake() == 11.0
    freshness.heard(10.5)
    assert freshness.wake() is None
    assert run(freshness, 20.0) == []


def test_quiet_spell_starts_checks_and_loses_the_path() -> None:
    freshness = Freshness(SETTINGS)
    freshness.sent(10.0)
    freshness.sent(10.5)  # the oldest unanswered datagram counts
    happened = run(freshness, 30.0)
    checks = [t for t, what in happened if what == "check"]
    # One at the end of the quiet second, then every interval until lost.
    assert checks == [11.0, 11.25, 11.5, 11.75, 12.0, 12.25, 12.5, 12.75]
    # The first check is silent; from the second on, the state says so.
    assert (11.25, "checking") in happened
    assert (11.0, "checking") not in happened
    assert happened[-1] == (13.0, "lost")
    assert freshness.state is PathState.LOST
    assert freshness.wake() is None
    assert freshness.tick(50.0).check is False
    # Checks given up on count as expired, each once, those still in flight
    # at the loss too.
    expired = [t for t, what in happened if what == "expired"]
    assert expired == [12.0, 12.25, 12.5, 12.75, 13.0, 13.0, 13.0, 13.0]


def test_answer_to_a_check_ends_checking() -> None:
    freshness = Freshness(SETTINGS)
    freshness.sent(0.0)
    assert freshness.tick(1.0).check
    freshness.checked("a", 1.0)
    tick = freshness.tick(1.25)
    assert tick.check and tick.changed
    freshness.checked("b", 1.25)
    assert freshness.state is PathState.CHECKING
    assert freshness.check_answered("unknown", 1.3) is None
    assert freshness.state is PathState.CHECKING
    assert freshness.check_answered("a", 1.5) == pytest.approx(0.5)
    assert freshness.state.value == "healthy"
    assert freshness.checks_sent == 0
    # A second ACK for the same check is not a new answer.
    assert freshness.check_answered("a", 1.6) is None
    # "b" is still in flight and expires, counted once, without a new spell.
    assert freshness.wake() == 2.25
    assert freshness.tick(2.25) == Tick(expired=1)
    assert freshness.wake() is None


def test_answer_to_the_first_check_keeps_the_state_healthy() -> None:
    freshness = Freshness(SETTINGS)
    freshness.sent(0.0)
    assert freshness.tick(1.0) == Tick(check=True)
    freshness.checked(1, 1.0)
    assert freshness.check_answered(1, 1.1) == pytest.approx(0.1)
    assert freshness.state is PathState.HEALTHY


def test_a_stopped_flow_from_the_peer_is_checked_once() -> None:
    """Our NAT may have silenced it, and only a datagram of ours opens it again."""
    freshness = Freshness(SETTINGS)
    freshness.heard(0.0)
    assert freshness.wake() is None  # one datagram is no flow
    freshness.heard(0.1)
    freshness.heard(0.2)
    assert freshness.wake() == pytest.approx(1.2)  # the quiet second
    tick = freshness.tick(1.2)
    assert tick.check and not tick.changed
    freshness.checked("a", 1.2)
    assert freshness.check_answered("a", 1.25) is not None
    # Answered: nothing more until the peer's data comes again.
    assert freshness.wake() is None
    assert run(freshness, 100.0) == []


def test_a_slow_flow_is_given_twice_its_gap() -> None:
    freshness = Freshness(SETTINGS)
    freshness.heard(10.0)
    freshness.heard(13.0)
    assert freshness.wake() == 19.0
    # Our own datagram wants an answer sooner.
    freshness.sent(14.0)
    assert freshness.wake() == 15.0
    freshness.sent(14.5)
    assert freshness.wake() == 15.0


def test_a_silenced_flow_loses_the_path() -> None:
    freshness = Freshness(SETTINGS)
    freshness.heard(0.0)
    freshness.heard(0.1)
    happened = run(freshness, 100.0)
    assert happened[0] == (1.1, "check")
    when, what = happened[-1]
    assert (round(when, 6), what) == (3.1, "lost")


def test_peer_data_does_not_end_checks() -> None:
    """Only an ACK to our own check shows that our datagrams still arrive."""
    freshness = Freshness(SETTINGS)
    freshness.sent(0.0)
    freshness.tick(1.0)
    freshness.checked("a", 1.0)
    freshness.heard(1.1)
    assert freshness.tick(1.25).check
    freshness.checked("b", 1.25)
    freshness.heard(1.3)
    assert freshness.state is PathState.CHECKING
    assert run(freshness, 10.0, start=1.25)[-1] == (3.0, "lost")


def test_keepalive_answer_ends_checking() -> None:
    freshness = Freshness(SETTINGS)
    freshness.sent(0.0)
    for now in (1.0, 1.25):
        assert freshness.tick(now).check
        freshness.checked(now, now)
    assert freshness.state is PathState.CHECKING
    assert freshness.answered(1.3) is True
    assert freshness.state.value == "healthy"
    assert freshness.answered(1.4) is False


def test_lost_is_final() -> None:
    freshness = Freshness(SETTINGS)
    freshness.sent(0.0)
    assert run(freshness, 10.0)[-1] == (3.0, "lost")
    assert freshness.answered(3.1) is False
    freshness.sent(3.2)
    assert freshness.state is PathState.LOST
    assert freshness.wake() is None


def test_patience_follows_a_slow_path() -> None:
    """A path whose round trip needs longer is given longer before checks and loss."""
    freshness = Freshness(SETTINGS, patience=3.0)
    assert (freshness.quiet, freshness.lost_after) == (3.0, 6.0)
    freshness.sent(0.0)
    happened = run(freshness, 100.0)
    assert happened[0] == (3.0, "check")
    assert happened[-1] == (9.0, "lost")
    freshness = Freshness(SETTINGS)
    freshness.set_patience(1.5)
    assert (freshness.quiet, freshness.lost_after) == (1.5, 3.0)


def test_check_rate_is_bounded() -> None:
    """At most one check per interval, however often the application sends."""
    freshness = Freshness(SETTINGS)
    now = 0.0
    checks = 0
    while now < 3.0:
        freshness.sent(now)
        tick = freshness.tick(now)
        if tick.check:
            checks += 1
            freshness.checked(checks, now)
        now = round(now + 0.01, 2)
    assert checks == 8  # 2 s of checks at 4 a second


# --- LivenessChecks on a clock ---


class Path:
    """A kept path's owner: counts what is sent, and the verdicts."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[int] = []
        self.states: list[PathState] = []
        self.lost = 0
        self.machine = KeepAliveMachine(
            send_probe=lambda: "probe", on_lost=lambda: None, **reactor_callables(clock)
        )
        self.checks = LivenessChecks(
            SETTINGS,
            send_check=self.send,
            machine=self.machine,
            on_lost=self.on_lost,
            on_state=self.states.append,
            **reactor_callables(clock),
        )

    def send(self) -> int:
        self.sent.append(len(self.sent))
        return self.sent[-1]

    def on_lost(self) -> None:
        self.lost += 1


def test_checks_lose_a_silent_path_in_seconds() -> None:
    clock = Clock()
    path = Path(clock)
    for _ in range(10):
        path.checks.sent()
        clock.advance(0.1)
    clock.pump([0.05] * 100)
    assert path.lost == 1
    assert path.states == [PathState.CHECKING, PathState.LOST]
    assert len(path.sent) == 8
    # Checks given up on count as lost probes of the link.
    assert path.machine.loss.lost == 8
    assert path.machine.quality().loss > 0
    assert not clock.getDelayedCalls()
    path.checks.sent()
    assert not clock.getDelayedCalls()


def test_checks_recover_on_an_answer() -> None:
    clock = Clock()
    path = Path(clock)
    path.checks.sent()
    clock.advance(1.0)
    clock.advance(0.25)
    assert path.sent == [0, 1]
    assert path.checks.state is PathState.CHECKING
    assert path.checks.check_answered(7) is False
    clock.advance(0.05)
    assert path.checks.check_answered(1) is True
    assert path.states == [PathState.CHECKING, PathState.HEALTHY]
    assert path.machine.rtt.latest == pytest.approx(0.05)
    clock.pump([0.25] * 40)
    assert path.lost == 0
    assert len(path.sent) == 2


def test_stopped_checks_do_nothing() -> None:
    clock = Clock()
    path = Path(clock)
    path.checks.sent()
    path.checks.stop()
    assert not clock.getDelayedCalls()
    clock.advance(10)
    assert path.sent == [] and path.lost == 0
    assert path.checks.check_answered(0) is False


def test_a_failing_send_counts_as_an_unanswered_check() -> None:
    clock = Clock()
    path = Path(clock)

    def broken() -> object:
        raise OSError("no route")

    path.checks._send_check = broken
    path.checks.sent()
    clock.pump([0.05] * 100)
    assert path.lost == 1
    assert len(clock.getDelayedCalls()) == 0
