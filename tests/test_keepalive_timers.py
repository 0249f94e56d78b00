"""The clock a keep-alive machine runs on, and the timer queue that machines share."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from twisted.internet.task import Clock

from tests.support.keepalive import Owner, advance_to, captured_log
from twisted_nat.keepalive import (
    KeepAliveMachine,
    Schedule,
    TimerHandle,
    TimerQueue,
    reactor_callables,
)

# A power of two, so that step arithmetic on the clock's floats is exact.
RESOLUTION = 0.25


def test_reactor_callables_use_the_reactor():
    clock = Clock()
    clock.advance(7.0)
    callables = reactor_callables(clock)
    assert callables["now"]() == 7.0
    handle = callables["schedule"](1.0, lambda: None)
    assert handle.active()
    assert clock.getDelayedCalls() == [handle]
    handle.cancel()
    assert not handle.active()
    assert clock.getDelayedCalls() == []


def recorder(clock: Clock, fired: list[tuple[str, float]], name: str) -> Callable[[], None]:
    """A timer function that notes its name and the time it was called."""
    return lambda: fired.append((name, clock.seconds()))


def test_timers_fire_at_the_end_of_their_step_in_the_order_scheduled():
    clock = Clock()
    queue = TimerQueue.for_reactor(clock, RESOLUTION)
    assert queue.resolution == RESOLUTION
    fired: list[tuple[str, float]] = []
    for name, delay in [("b", 0.2), ("a", 0.1), ("c", 0.25), ("d", 0.3)]:
        queue.schedule(delay, recorder(clock, fired, name))
    assert queue.pending == 4
    assert len(clock.getDelayedCalls()) == 1, "one reactor call for every timer"
    clock.advance(0.24)
    assert fired == [], "up to a step late"
    clock.advance(0.01)
    assert fired == [("b", 0.25), ("a", 0.25), ("c", 0.25)]
    assert queue.pending == 1
    clock.advance(0.24)
    assert fired[3:] == [], "never early"
    clock.advance(0.01)
    assert fired[3:] == [("d", 0.5)]
    assert queue.pending == 0
    assert clock.getDelayedCalls() == [], "an idle queue leaves nothing on the clock"


def test_an_earlier_timer_brings_the_reactor_call_forward():
    clock = Clock()
    queue = TimerQueue.for_reactor(clock, RESOLUTION)
    fired: list[tuple[str, float]] = []
    queue.schedule(10.0, recorder(clock, fired, "late"))
    assert [call.getTime() for call in clock.getDelayedCalls()] == [10.0]
    queue.schedule(1.0, recorder(clock, fired, "early"))
    assert [call.getTime() for call in clock.getDelayedCalls()] == [1.0]
    clock.advance(1.0)
    assert fired == [("early", 1.0)]
    assert [call.getTime() for call in clock.getDelayedCalls()] == [10.0]
    clock.advance(9.0)
    assert fired == [("early", 1.0), ("late", 10.0)]


def test_cancelled_timers_are_forgotten_with_their_reactor_call():
    clock = Clock()
    queue = TimerQueue.for_reactor(clock, RESOLUTION)
    fired: list[tuple[str, float]] = []
    first = queue.schedule(1.0, recorder(clock, fired, "first"))
    second = queue.schedule(1.0, recorder(clock, fired, "second"))
    third = queue.schedule(2.0, recorder(clock, fired, "third"))
    assert first.active()
    assert queue.pending == 3
    first.cancel()
    first.cancel()
    assert not first.active()
    assert queue.pending == 2
    clock.advance(1.0)
    assert fired == [("second", 1.0)]
    assert not second.active(), "a called timer is no longer active"
    second.cancel()
    assert queue.pending == 1, "cancelling a called timer changes nothing"
    third.cancel()
    assert queue.pending == 0
    assert clock.getDelayedCalls() == []
    clock.advance(10.0)
    assert fired == [("second", 1.0)]


def test_a_timer_cancelled_by_an_earlier_one_of_its_step_is_not_called():
    clock = Clock()
    queue = TimerQueue.for_reactor(clock, RESOLUTION)
    fired: list[tuple[str, float]] = []
    handles: list[TimerHandle] = []
    queue.schedule(0.1, lambda: handles[0].cancel())
    handles.append(queue.schedule(0.2, recorder(clock, fired, "cancelled")))
    clock.advance(RESOLUTION)
    assert fired == []
    assert queue.pending == 0
    assert clock.getDelayedCalls() == []


def test_timers_scheduled_while_firing_wait_for_the_next_reactor_call():
    clock = Clock()
    delays: list[float] = []

    def schedule(delay: float, function: Callable[[], None]) -> TimerHandle:
        delays.append(delay)
        return clock.callLater(delay, function)

    queue = TimerQueue(schedule, clock.seconds, RESOLUTION)
    fired: list[tuple[str, float]] = []

    def first() -> None:
        fired.append(("first", clock.seconds()))
        queue.schedule(0.0, recorder(clock, fired, "again"))
        assert fired == [("first", RESOLUTION)], "not called from inside the call"

    queue.schedule(RESOLUTION, first)
    clock.advance(RESOLUTION)
    assert fired == [("first", RESOLUTION), ("again", RESOLUTION)]
    assert delays == [RESOLUTION, 0.0], "a second reactor call, at once"
    assert queue.pending == 0


def test_a_failing_timer_is_logged_and_the_rest_are_called():
    clock = Clock()
    queue = TimerQueue.for_reactor(clock, RESOLUTION)
    fired: list[tuple[str, float]] = []

    def broken() -> None:
        raise RuntimeError("owner bug")

    queue.schedule(0.1, broken)
    queue.schedule(0.1, recorder(clock, fired, "after"))
    with captured_log() as events:
        clock.advance(RESOLUTION)
    assert fired == [("after", RESOLUTION)]
    failures = [e["log_failure"].value for e in events if "log_failure" in e]
    assert [type(f) for f in failures] == [RuntimeError]
    assert queue.pending == 0


def test_resolution_is_validated():
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            TimerQueue.for_reactor(Clock(), bad)


def test_one_shared_queue_per_reactor_and_resolution():
    clock = Clock()
    queue = TimerQueue.shared(clock, RESOLUTION)
    assert TimerQueue.shared(clock, RESOLUTION) is queue
    assert TimerQueue.shared(clock, 0.5) is not queue
    assert TimerQueue.shared(clock, 0.5).resolution == 0.5
    assert TimerQueue.shared(Clock(), RESOLUTION) is not queue


class UnhashableClock(Clock):
    __hash__ = None  # type: ignore[assignment]


def test_a_reactor_that_cannot_be_a_key_gets_a_queue_of_its_own():
    clock = UnhashableClock()
    queue = TimerQueue.shared(clock, RESOLUTION)
    assert TimerQueue.shared(clock, RESOLUTION) is not queue
    fired: list[tuple[str, float]] = []
    queue.schedule(1.0, recorder(clock, fired, "timer"))
    clock.advance(1.0)
    assert fired == [("timer", 1.0)], "the queue runs on the reactor it was given"


def test_machines_on_one_queue_share_one_reactor_call():
    """Each probe leaves when it is due or at most one step later."""
    clock = Clock()
    queue = TimerQueue.for_reactor(clock, RESOLUTION)
    schedule: Schedule = queue.schedule
    started: list[tuple[float, Owner]] = []
    for _ in range(100):
        clock.advance(0.01)
        owner = Owner(clock)
        KeepAliveMachine(
            send_probe=owner.send_probe,
            on_lost=owner.on_lost,
            schedule=schedule,
            now=clock.seconds,
        ).start()
        started.append((clock.seconds(), owner))
    assert queue.pending == 100
    assert len(clock.getDelayedCalls()) == 1
    advance_to(clock, 27.0)
    assert len(clock.getDelayedCalls()) == 1
    for start, owner in started:
        [sent] = owner.send_times
        assert start + 25.0 - 1e-9 <= sent < start + 25.0 + RESOLUTION
    assert len({sent for _, owner in started for sent in owner.send_times}) == 4
