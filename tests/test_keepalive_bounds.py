"""
What a keep-alive machine is held to whatever happens: its memory per
connection, one timer at most, probes in flight bounded, no exception.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from collections.abc import Callable

from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from tests.support.keepalive import Owner, advance_to, state
from twisted_nat.keepalive import KeepAliveMachine, KeepAliveState, reactor_callables

# --- memory ---

MACHINES = 1000
BYTES_PER_MACHINE_BOUND = 2048


class _Connection:
    """The smallest stand-in for the protocol that will own a machine."""

    __slots__ = ("counter", "machine")
    machine: KeepAliveMachine

    def __init__(self) -> None:
        self.counter = 0

    def send_probe(self) -> bytes:
        self.counter += 1
        return self.counter.to_bytes(12, "big")

    def lost(self) -> None:
        pass


def _traced_bytes() -> int:
    """
    Bytes allocated and alive, leaving out Twisted's logging: until logging
    begins, Twisted buffers up to 65,536 events globally (the debug event
    of each failed probe among them), which is no connection's memory.
    """
    gc.collect()
    logging = os.path.join("twisted", "logger", "")
    return sum(
        stat.size
        for stat in tracemalloc.take_snapshot().statistics("filename")
        if logging not in stat.traceback[0].filename
    )


def test_memory_per_machine():
    """
    Each machine with its estimators and their history, its armed timer (a
    DelayedCall), a probe in flight with its 12-byte transaction id, its
    clock callables and a minimal owner stays under 2 KiB: a machine exists
    once per connection, for thousands of connections.

    Each connection gets a Clock of its own, made before measuring (one
    reactor serves every connection in real life), because a shared Clock
    re-sorts its list of a thousand calls at every insertion.
    """
    clocks = [Clock() for _ in range(MACHINES)]
    tracemalloc.start()
    try:
        before = _traced_bytes()
        connections = []
        for clock in clocks:
            connection = _Connection()
            connection.machine = KeepAliveMachine(
                send_probe=connection.send_probe,
                on_lost=connection.lost,
                **reactor_callables(clock),
            )
            connection.machine.start()
            connections.append(connection)
        for connection, clock in zip(connections, clocks, strict=True):
            machine = connection.machine
            for round_ in range(6):
                advance_to(clock, clock.seconds() + 25.0)
                if round_ % 5 == 2:
                    # This probe is lost; the retry is answered.
                    advance_to(clock, clock.seconds() + 5.0)
                clock.advance(0.03125 * (round_ % 4 + 1))
                machine.ack_received(connection.counter.to_bytes(12, "big"))
                machine.traffic_received()
                machine.traffic_sent()
            # The rest of a full loss window straight into the estimator.
            for i in range(100):
                machine.loss.record(i % 9 != 0)
            # Leave a probe in flight, as right after a send.
            advance_to(clock, clock.seconds() + 25.0)
        used = _traced_bytes() - before
    finally:
        tracemalloc.stop()
    per_machine = used / MACHINES
    machine = connections[0].machine
    assert machine.in_flight == 1
    assert machine.quality().probes_lost == 1 + 12
    assert machine.loss.recorded == 100
    assert machine.jitter.jitter is not None
    assert all(len(clock.getDelayedCalls()) == 1 for clock in clocks)
    print(f"keep-alive memory: {per_machine:.0f} bytes per connection")
    assert per_machine < BYTES_PER_MACHINE_BOUND


# --- any sequence of events ---

# Each event is followed by some time passing, often whole timeouts and
# intervals, so that streaks, warnings and losses are common.
events = st.lists(
    st.tuples(
        st.one_of(
            st.tuples(st.just("start"), st.booleans()),
            st.tuples(st.just("restart"), st.booleans()),
            st.just(("stop",)),
            st.tuples(st.just("ack_received"), st.integers(0, 40)),
            st.just(("traffic_received",)),
            st.just(("traffic_sent",)),
            st.just(("probe_received",)),
            st.tuples(st.just("set_interval"), st.floats(0.5, 60)),
            st.just(("quality",)),
        ),
        st.sampled_from([0.0, 0.5, 4.999, 5.0, 25.0, 60.0]) | st.floats(0, 40),
    ),
    min_size=4,
    max_size=40,
)


@settings(max_examples=400, deadline=None)
@given(
    events,
    st.floats(0.5, 30),
    st.floats(0.5, 10),
    st.none() | st.floats(0.5, 30),
    st.integers(1, 4),
    st.integers(0, 3),
    st.booleans(),
    st.booleans(),
)
def test_any_events_never_raise_nor_leak_timers(
    script, interval, timeout, retry_interval, warn_after, extra, restart_on_lost, started
):
    owner = Owner()
    react: list[Callable[[], None]] = []

    def on_lost() -> None:
        owner.on_lost()
        for reaction in react:
            reaction()

    machine = KeepAliveMachine(
        send_probe=owner.send_probe,
        on_warning=owner.on_warning,
        on_lost=on_lost,
        interval=interval,
        timeout=timeout,
        retry_interval=retry_interval,
        warn_after=warn_after,
        dead_after=warn_after + extra,
        **reactor_callables(owner.clock),
    )
    if restart_on_lost:
        react.append(machine.restart)
    spacing = min(interval, timeout if retry_interval is None else retry_interval)
    if started:
        machine.start()
    for (name, *args), delay in script:
        if name == "set_interval":
            machine.set_interval(args[0])
            spacing = min(spacing, args[0])
        elif name == "quality":
            assert 0.0 <= machine.quality().loss <= 1.0
        elif name == "stop":
            machine.stop()
            callbacks = len(owner.warnings), len(owner.losses), len(owner.sent)
            owner.clock.advance(100.0)
            assert (len(owner.warnings), len(owner.losses), len(owner.sent)) == callbacks
        else:
            getattr(machine, name)(*args)
        owner.clock.advance(delay)
        calls = owner.clock.getDelayedCalls()
        if state(machine) is KeepAliveState.RUNNING:
            assert len(calls) == 1
        else:
            assert calls == []
        assert machine.consecutive_failures <= warn_after + extra
        assert machine.in_flight <= timeout / spacing + 2
        assert all(failures == warn_after for _, failures in owner.warnings)
    event(f"warned {bool(owner.warnings)}, lost {bool(owner.losses)}")
    machine.stop()
    assert owner.clock.getDelayedCalls() == []
    assert machine.in_flight == 0
