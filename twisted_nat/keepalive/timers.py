"""
The clock a keep-alive runs on: what a timer and a scheduler must offer,
how to take both from a reactor, and L{TimerQueue}, which puts the timers
of thousands of keep-alive machines on one reactor call between them.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Protocol, TypedDict

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = [
    "Now",
    "ReactorCallables",
    "Schedule",
    "TimerHandle",
    "TimerQueue",
    "reactor_callables",
]

SLACK = 1e-9
"""
Reactor time is a float; a timer that fires at C{t0 + (deadline - t0)}
can land one rounding step before C{deadline}.  Anything due within this
much of now is treated as due, so such a wake-up is never wasted.
"""


def check_seconds(name: str, value: float) -> None:
    """
    @raise ValueError: unless C{value}, the setting C{name}, is a positive,
        finite number of seconds.
    """
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a positive, finite number of seconds, not {value!r}")


class TimerHandle(Protocol):
    """
    What C{schedule} must return: the part of C{IDelayedCall} the machine
    uses, so that C{reactor.callLater} fits as it is and a test may hand in
    anything smaller.
    """

    def active(self) -> bool: ...

    def cancel(self) -> None: ...


Schedule = Callable[[float, Callable[[], None]], TimerHandle]
"""C{schedule(delay, function)}: call C{function} in C{delay} seconds."""

Now = Callable[[], float]
"""C{now()}: the current time in seconds, from the same clock as C{schedule}."""


class ReactorCallables(TypedDict):
    """The clock half of L{KeepAliveMachine}'s arguments."""

    schedule: Schedule
    now: Now


def reactor_callables(reactor: IReactorTime) -> ReactorCallables:
    """
    C{schedule} and C{now} for a L{KeepAliveMachine} from an
    C{IReactorTime}, so the owner writes
    C{KeepAliveMachine(send_probe=..., on_lost=..., **reactor_callables(reactor))}
    and tests pass a C{task.Clock}.
    """
    return ReactorCallables(schedule=reactor.callLater, now=reactor.seconds)


class _QueuedTimer:
    """A L{TimerQueue} timer: the function to call, until it is called or cancelled."""

    __slots__ = ("_function", "_queue", "_step")

    def __init__(self, queue: TimerQueue, step: int, function: Callable[[], object]) -> None:
        self._queue = queue
        self._step = step
        self._function: Callable[[], object] | None = function

    def active(self) -> bool:
        return self._function is not None

    def cancel(self) -> None:
        if self._function is not None:
            self._function = None
            self._queue._cancel(self)


class TimerQueue:
    """
    Many timers on one reactor call: a C{schedule} for an owner that runs
    thousands of L{KeepAliveMachine}s, such as a node with a connection
    to every one of thousands of peers.

    A reactor C{DelayedCall} per timer would cost memory, a push onto and
    a pop off the reactor's heap, and a turn of the reactor loop each, per
    connection.  Here time is cut into steps of C{resolution} seconds, and
    a timer is a small handle in the list of the step its deadline falls
    in (a timing wheel, as kernels keep their timers).  One reactor call is
    made, for the end of the earliest step that has a timer, and it calls
    that step's timers in the order they were scheduled.  So timers fire up
    to C{resolution} late, never early, and a second's worth of keep-alive
    work costs at most 1 / C{resolution} turns of the reactor however many
    connections there are.  Scheduling costs a list append and a
    dictionary lookup.

    A call that fails is logged and the rest are still called.  A
    cancelled timer leaves its step's list at once, so nothing cancelled
    stays in memory; when no timer is left, the reactor call is cancelled
    too, and an idle queue leaves nothing on the clock.
    """

    __slots__ = (
        "__weakref__",
        "_call",
        "_call_step",
        "_firing",
        "_live",
        "_now",
        "_resolution",
        "_schedule",
        "_steps",
        "_timers",
    )

    log = Logger()

    def __init__(self, schedule: Schedule, now: Now, resolution: float) -> None:
        check_seconds("resolution", resolution)
        self._schedule = schedule
        self._now = now
        self._resolution = resolution
        # Step number (deadline / resolution, rounded up) -> its timers; and
        # a heap of the step numbers with timers (a step emptied by
        # cancelling may linger there).
        self._timers: dict[int, list[_QueuedTimer]] = {}
        self._steps: list[int] = []
        self._live = 0
        self._call: TimerHandle | None = None
        self._call_step = 0
        self._firing = False

    @classmethod
    def for_reactor(cls, reactor: IReactorTime, resolution: float) -> TimerQueue:
        """A queue on C{reactor}'s clock, of its own."""
        return cls(reactor.callLater, reactor.seconds, resolution)

    @classmethod
    def shared(cls, reactor: IReactorTime, resolution: float) -> TimerQueue:
        """
        The one queue of this C{resolution} on C{reactor}, so that every
        owner on one reactor (several sockets' hole punchers, say) shares a
        wake-up rather than each making its own.  A reactor that cannot be
        weakly referenced, or hashed, gets a queue of its own each time.
        """
        try:
            queues = _SHARED_QUEUES.setdefault(reactor, {})
        except TypeError:
            return cls.for_reactor(reactor, resolution)
        queue = queues.get(resolution)
        if queue is None:
            queue = queues[resolution] = cls.for_reactor(reactor, resolution)
        return queue

    @property
    def resolution(self) -> float:
        return self._resolution

    @property
    def pending(self) -> int:
        """The timers neither called nor cancelled yet."""
        return self._live

    def schedule(self, delay: float, function: Callable[[], object]) -> TimerHandle:
        """Call C{function} in C{delay} seconds: C{callLater}, without arguments."""
        step = math.ceil((self._now() + delay) / self._resolution)
        timer = _QueuedTimer(self, step, function)
        timers = self._timers.get(step)
        if timers is None:
            self._timers[step] = [timer]
            heappush(self._steps, step)
            # While firing, _fire arms once, for everything, when it is done.
            if not self._firing and (self._call is None or step < self._call_step):
                self._arm(step)
        else:
            timers.append(timer)
        self._live += 1
        return timer

    def _arm(self, step: int) -> None:
        """Have the reactor call L{_fire} at the end of C{step}."""
        call = self._call
        if call is not None and call.active():
            call.cancel()
        self._call_step = step
        self._call = self._schedule(max(0.0, step * self._resolution - self._now()), self._fire)

    def _cancel(self, timer: _QueuedTimer) -> None:
        self._live -= 1
        timers = self._timers.get(timer._step)
        if timers is not None:  # else its step is being fired, or was
            timers.remove(timer)
            if not timers:
                del self._timers[timer._step]
        if self._live == 0 and not self._firing:
            self._steps.clear()
            call, self._call = self._call, None
            if call is not None and call.active():
                call.cancel()

    def _fire(self) -> None:
        self._call = None
        steps, timers = self._steps, self._timers
        # The last step that has ended; a step whose end the reactor's float
        # arithmetic put a hair in the future waits for the next call.
        ended = math.floor((self._now() + SLACK) / self._resolution)
        due = []
        while steps and steps[0] <= ended:
            due.append(timers.pop(heappop(steps), ()))
        # Timers these calls schedule, even for a step that has ended, wait
        # for the next reactor call, as calls made by callLater(0) do.
        self._firing = True
        try:
            for batch in due:
                for timer in batch:
                    function = timer._function
                    if function is None:
                        continue  # cancelled by an earlier call of this batch
                    timer._function = None
                    self._live -= 1
                    try:
                        function()
                    except Exception:
                        self.log.failure("timer {function!r} failed", function=function)
        finally:
            self._firing = False
        # Steps emptied by cancelling are dropped on the way to the next one.
        while steps and steps[0] not in timers:
            heappop(steps)
        if steps:
            self._arm(steps[0])


_SHARED_QUEUES: weakref.WeakKeyDictionary[IReactorTime, dict[float, TimerQueue]] = (
    weakref.WeakKeyDictionary()
)
