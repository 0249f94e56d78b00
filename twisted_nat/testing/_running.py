"""
Running a simulation's clock: call by call, each scheduled call at its own
time, and until a Deferred fires.

C{Clock.advance} alone runs every call that falls due within the move at
its end, so a retransmission timer would read the wrong time; these move
the clock from one scheduled call to the next instead.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from twisted_nat.errors import TwistedNATError

T = TypeVar("T")


class SimulationTimeout(TwistedNATError, TimeoutError):
    """L{SimulatedInternet.run_until} gave up on a Deferred that never fired."""


def advance_to(clock: Clock, target: float) -> None:
    """Move C{clock} to C{target}, running each call due on the way at its own time."""
    while True:
        upcoming = next_call(clock)
        if upcoming is None or upcoming > target:
            break
        # Set the time exactly: advance(upcoming - now) can fall an ulp
        # short of the call and loop forever.
        clock.rightNow = max(clock.rightNow, upcoming)
        clock.advance(0)
    clock.rightNow = max(clock.rightNow, target)


def next_call(clock: Clock) -> float | None:
    """When the next scheduled call on C{clock} is due, or None if none is."""
    calls = clock.getDelayedCalls()
    return min(call.getTime() for call in calls) if calls else None


def run_until(
    clock: Clock,
    deferred: Deferred[T] | Coroutine[Deferred[Any], Any, T],
    timeout: float,
    step: float,
) -> T:
    """
    Advance C{clock} in steps of C{step} until C{deferred} fires; see
    L{SimulatedInternet.run_until <twisted_nat.testing.SimulatedInternet.run_until>}.
    """
    if step <= 0:
        raise ValueError("step must be positive")
    d = deferred if isinstance(deferred, Deferred) else Deferred.fromCoroutine(deferred)
    outcome: list[T | Failure] = []

    def record(result: T | Failure) -> T | None:
        outcome.append(result)
        return None if isinstance(result, Failure) else result

    d.addBoth(record)
    start = clock.seconds()
    deadline = start + timeout
    while not outcome:
        now = clock.seconds()
        upcoming = next_call(clock)
        if upcoming is None:
            raise SimulationTimeout(
                f"{d!r} has not fired after {now - start:.3f} simulated seconds,"
                " and nothing is scheduled that could fire it"
            )
        if now >= deadline or upcoming > deadline:
            advance_to(clock, max(now, deadline))
            raise SimulationTimeout(f"{d!r} has not fired within {timeout} simulated seconds")
        # Skip the quiet steps: land at the end of the step holding the
        # next scheduled call.
        steps = max(1, -int(-(upcoming - now) // step))
        advance_to(clock, min(now + steps * step, deadline))
    result = outcome[0]
    if isinstance(result, Failure):
        result.raiseException()
    return result
