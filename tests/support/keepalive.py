"""
The owner of a keep-alive machine, for tests: records what the machine
asks of it, on a C{task.Clock}; and the clock and log helpers its tests
share.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from twisted_nat.keepalive import KeepAliveMachine, KeepAliveState, reactor_callables


class Owner:
    """What a peer connection hands the machine: records everything."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.sent: list[tuple[float, int]] = []
        self.warnings: list[tuple[float, int]] = []
        self.losses: list[float] = []
        self.next_id = 0

    def send_probe(self) -> int:
        self.next_id += 1
        self.sent.append((self.clock.seconds(), self.next_id))
        return self.next_id

    def on_warning(self, failures: int) -> None:
        self.warnings.append((self.clock.seconds(), failures))

    def on_lost(self) -> None:
        self.losses.append(self.clock.seconds())

    @property
    def send_times(self) -> list[float]:
        return [t for t, _ in self.sent]

    @property
    def last_id(self) -> int:
        return self.sent[-1][1]


def make(**kwargs: Any) -> tuple[KeepAliveMachine, Owner]:
    """A machine with C{kwargs} and an L{Owner} of its own, on a new clock."""
    owner = Owner()
    machine = KeepAliveMachine(
        send_probe=owner.send_probe,
        on_warning=owner.on_warning,
        on_lost=owner.on_lost,
        **reactor_callables(owner.clock),
        **kwargs,
    )
    return machine, owner


def state(machine: KeepAliveMachine) -> KeepAliveState:
    """The state, read afresh (mypy would otherwise keep an earlier assertion's)."""
    return machine.state


def advance_to(clock: Clock, when: float) -> None:
    """Advance to each timer in turn, so that it sees the time it was set for."""
    while True:
        due = [call.getTime() for call in clock.getDelayedCalls()]
        step = min([t for t in due if t <= when], default=when)
        clock.advance(max(0.0, step - clock.seconds()))
        if step >= when:
            return


@contextmanager
def captured_log() -> Iterator[EventLoggingObserver]:
    """The events logged meanwhile, to check what a machine or queue logged."""
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)
