"""Keep-alive decisions and link-quality estimators, on a Clock."""

from __future__ import annotations

import gc
import math
import os
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from twisted_nat.keepalive import (
    JitterEstimator,
    KeepAliveMachine,
    KeepAliveState,
    LinkQuality,
    LossEstimator,
    RTTEstimator,
    interval_for_lifetime,
    reactor_callables,
)

# --- RFC 6298 ---


def test_rtt_first_sample():
    """RFC 6298 2.2: SRTT = R, RTTVAR = R/2, RTO = SRTT + 4 RTTVAR."""
    rtt = RTTEstimator()
    assert (rtt.srtt, rtt.rttvar, rtt.latest) == (None, None, None)
    assert rtt.rto == 1.0, "RFC 6298 2.1: 1 second before any sample"
    rtt.update(1.0)
    assert (rtt.srtt, rtt.rttvar, rtt.latest) == (1.0, 0.5, 1.0)
    assert rtt.rto == 3.0


def test_rtt_later_samples_match_hand_computation():
    """
    RFC 6298 2.3 with alpha 1/8, beta 1/4; RTTVAR is updated against the
    old SRTT.  The values are binary fractions, so equality is exact.
    """
    rtt = RTTEstimator()
    rtt.update(1.0)
    rtt.update(2.0)
    # RTTVAR = 3/4 * 0.5 + 1/4 * |1 - 2| = 0.625; SRTT = 7/8 * 1 + 1/8 * 2 = 1.125
    assert (rtt.srtt, rtt.rttvar, rtt.latest) == (1.125, 0.625, 2.0)
    assert rtt.rto == 1.125 + 4 * 0.625
    rtt.update(0.5)
    # RTTVAR = 3/4 * 0.625 + 1/4 * |1.125 - 0.5| = 0.625
    # SRTT = 7/8 * 1.125 + 1/8 * 0.5 = 1.046875
    assert (rtt.srtt, rtt.rttvar, rtt.latest) == (1.046875, 0.625, 0.5)
    assert rtt.rto == 3.546875


def test_rto_bounds_and_granularity():
    rtt = RTTEstimator()
    rtt.update(0.1)
    assert rtt.rto == 1.0, "RFC 6298 2.4: at least a second by default"
    fast = RTTEstimator(min_rto=0.2)
    fast.update(0.1)
    assert fast.rto == pytest.approx(0.3)
    slow = RTTEstimator(max_rto=60.0)
    slow.update(30.0)
    assert slow.rto == 60.0
    steady = RTTEstimator(min_rto=0.01, granularity=0.25)
    for _ in range(200):
        steady.update(0.5)
    assert steady.rto == pytest.approx(0.75), "G keeps the RTO above SRTT as RTTVAR decays"


def test_rtt_rejects_impossible_samples_and_settings():
    rtt = RTTEstimator()
    for bad in (-0.001, math.nan, math.inf):
        with pytest.raises(ValueError):
            rtt.update(bad)
    assert rtt.srtt is None
    with pytest.raises(ValueError):
        RTTEstimator(min_rto=2.0, max_rto=1.0)
    with pytest.raises(ValueError):
        RTTEstimator(min_rto=0)
    with pytest.raises(ValueError):
        RTTEstimator(granularity=-1)


# --- RFC 3550 ---


def test_jitter_matches_hand_computation():
    """RFC 3550 6.4.1: J += (|D| - J) / 16, D the change in transit time."""
    jitter = JitterEstimator()
    jitter.update(1.0)
    assert jitter.jitter is None, "one transit time has no change yet"
    jitter.update(2.0)
    assert jitter.jitter == 1 / 16
    jitter.update(1.5)
    assert jitter.jitter == 0.0625 + (0.5 - 0.0625) / 16 == 0.08984375
    jitter.update(1.5)
    assert jitter.jitter == 0.08984375 * 15 / 16 == 0.084228515625


def test_jitter_converges_to_constant_difference():
    """Alternating transit times 0.1 and 0.3: |D| is always 0.2, so J tends to 0.2."""
    jitter = JitterEstimator()
    for i in range(400):
        jitter.update(0.1 if i % 2 else 0.3)
    assert jitter.jitter == pytest.approx(0.2)


# --- loss ---


def test_loss_window():
    loss = LossEstimator(window=4)
    assert (loss.fraction, loss.sent, loss.lost, loss.recorded) == (0.0, 0, 0, 0)
    for acknowledged in (True, False, False):
        loss.record(acknowledged)
    assert loss.fraction == 2 / 3
    for acknowledged in (True, True, True):
        loss.record(acknowledged)
    assert loss.recorded == 4
    assert loss.fraction == 1 / 4, "the oldest two outcomes left the window"
    assert (loss.sent, loss.lost) == (6, 2), "totals are kept beyond the window"
    for _ in range(4):
        loss.record(True)
    assert loss.fraction == 0.0


def test_loss_default_window_is_a_hundred():
    loss = LossEstimator()
    for i in range(250):
        loss.record(i % 10 != 0)
    assert loss.recorded == 100
    assert loss.fraction == pytest.approx(0.1)
    assert (loss.sent, loss.lost) == (250, 25)
    with pytest.raises(ValueError):
        LossEstimator(window=0)


# --- the machine ---


class Owner:
    """What a peer connection hands the machine: records everything."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.sent: list[tuple[float, int]] = []
        self.warnings: list[tuple[float, int]] = []
        self.losses: list[float] = []
        self._next_id = 0

    def send_probe(self) -> int:
        self._next_id += 1
        self.sent.append((self.clock.seconds(), self._next_id))
        return self._next_id

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


def test_probes_every_interval_with_one_timer():
    machine, owner = make()
    assert state(machine) is KeepAliveState.IDLE
    machine.start()
    assert state(machine) is KeepAliveState.RUNNING
    assert len(owner.clock.getDelayedCalls()) == 1
    for n in range(1, 5):
        advance_to(owner.clock, 25.0 * n)
        assert owner.send_times[-1] == 25.0 * n
        owner.clock.advance(0.125)
        assert machine.ack_received(owner.last_id) == 0.125
        assert len(owner.clock.getDelayedCalls()) == 1
    assert owner.send_times == [25.0, 50.0, 75.0, 100.0]
    assert machine.consecutive_failures == 0
    assert owner.warnings == []
    assert owner.losses == []


def test_start_can_probe_at_once_and_is_idempotent():
    machine, owner = make()
    machine.start(probe_now=True)
    machine.start(probe_now=True)
    assert owner.send_times == [0.0]
    assert len(owner.clock.getDelayedCalls()) == 1


def test_unanswered_probe_fails_after_timeout_and_is_retried_sooner():
    machine, owner = make()
    machine.start()
    advance_to(owner.clock, 29.5)
    assert owner.send_times == [25.0]
    assert machine.consecutive_failures == 0
    assert machine.in_flight == 1
    advance_to(owner.clock, 30.0)
    assert machine.consecutive_failures == 1
    assert owner.send_times == [25.0, 30.0], "retry_interval defaults to the timeout"
    owner.clock.advance(0.25)
    machine.ack_received(owner.last_id)
    assert machine.consecutive_failures == 0
    advance_to(owner.clock, 55.0)
    assert owner.send_times == [25.0, 30.0, 55.0], "back to the interval"


def test_warning_once_per_streak():
    machine, owner = make(dead_after=10)
    machine.start()
    advance_to(owner.clock, 30.0 + 5 * 5)  # failures at 30, 35, 40, 45, 50, 55
    assert machine.consecutive_failures == 6
    assert owner.warnings == [(40.0, 3)]
    owner.clock.advance(0.25)
    machine.ack_received(owner.last_id)
    assert machine.consecutive_failures == 0
    next_probe = owner.clock.seconds() - 0.25 + 25
    advance_to(owner.clock, next_probe + 3 * 5)
    assert owner.warnings == [(40.0, 3), (next_probe + 15, 3)], "a new streak warns again"
    assert owner.losses == []


def test_lost_after_dead_after_failures():
    """With the defaults: probe at 25, retries every 5 s, lost at 50 s."""
    machine, owner = make()
    machine.start()
    advance_to(owner.clock, 49.5)
    assert owner.losses == []
    advance_to(owner.clock, 50.0)
    assert owner.losses == [50.0]
    assert owner.warnings == [(40.0, 3)]
    assert owner.send_times == [25.0, 30.0, 35.0, 40.0, 45.0]
    assert state(machine) is KeepAliveState.LOST
    assert owner.clock.getDelayedCalls() == []
    advance_to(owner.clock, 500.0)
    assert len(owner.sent) == 5, "no probing while lost"
    assert owner.losses == [50.0], "lost is declared once"
    quality = machine.quality()
    assert (quality.probes_sent, quality.probes_lost, quality.consecutive_failures) == (5, 5, 5)
    assert quality.loss == 1.0


def test_lost_with_explicit_thresholds_and_interval_retries():
    machine, owner = make(
        interval=10.0, timeout=2.0, retry_interval=10.0, warn_after=2, dead_after=2
    )
    machine.start()
    advance_to(owner.clock, 30.0)
    assert owner.send_times == [10.0, 20.0]
    assert owner.warnings == [(22.0, 2)], "warned before lost, even with equal thresholds"
    assert owner.losses == [22.0]


def test_late_ack_is_not_counted_twice():
    machine, owner = make()
    machine.start()
    advance_to(owner.clock, 30.0)
    first = owner.sent[0][1]
    assert machine.consecutive_failures == 1
    assert (machine.loss.sent, machine.loss.lost) == (1, 1)
    owner.clock.advance(1.0)
    assert machine.ack_received(first) is None
    assert machine.consecutive_failures == 1
    assert (machine.loss.sent, machine.loss.lost) == (1, 1)
    assert machine.rtt.srtt is None, "a late answer is no round-trip sample"
    assert machine.ack_received(owner.last_id) == 1.0
    assert (machine.loss.sent, machine.loss.lost, machine.loss.fraction) == (2, 1, 0.5)
    assert machine.ack_received(owner.last_id) is None, "a duplicate ACK changes nothing"
    assert machine.loss.sent == 2


def test_unknown_and_early_acks_are_ignored():
    machine, owner = make()
    assert machine.ack_received(1) is None, "not started"
    machine.start()
    assert machine.ack_received("nonsense") is None
    assert machine.quality().probes_sent == 0


def test_traffic_received_ends_a_streak_but_does_not_postpone():
    machine, owner = make()
    machine.start()
    advance_to(owner.clock, 35.0)
    assert machine.consecutive_failures == 2
    machine.traffic_received()
    assert machine.consecutive_failures == 0
    assert machine.quality().probes_lost == 2
    # The probe from 35 s is still in flight and fails at 40 s: a new streak of one.
    advance_to(owner.clock, 40.0)
    assert machine.consecutive_failures == 1
    assert owner.warnings == []


def test_traffic_received_alone_keeps_the_schedule():
    machine, owner = make()
    machine.start()
    for t in range(1, 25):
        advance_to(owner.clock, float(t))
        machine.traffic_received()
    advance_to(owner.clock, 25.0)
    assert owner.send_times == [25.0], "inbound traffic does not refresh every NAT"


def test_traffic_both_ways_postpones_probes():
    machine, owner = make()
    machine.start()
    advance_to(owner.clock, 20.0)
    machine.traffic_sent()
    machine.traffic_received()
    advance_to(owner.clock, 44.5)
    assert owner.sent == []
    advance_to(owner.clock, 45.0)
    assert owner.send_times == [45.0]
    assert len(owner.clock.getDelayedCalls()) == 1


def test_traffic_sent_alone_does_not_silence_probes():
    """Sending into the void must still be found out."""
    machine, owner = make()
    machine.start()
    for t in range(1, 60):
        advance_to(owner.clock, float(t))
        machine.traffic_sent()
    assert owner.send_times == [25.0, 30.0, 35.0, 40.0, 45.0]
    assert owner.losses == [50.0]


def test_probe_received_counts_and_proves_liveness():
    machine, owner = make()
    machine.start()
    advance_to(owner.clock, 35.0)
    machine.probe_received()
    assert machine.consecutive_failures == 0
    assert machine.probes_received == 1


def test_set_interval_takes_effect_at_once():
    machine, owner = make()
    machine.start()
    advance_to(owner.clock, 5.0)
    machine.set_interval(10.0)
    assert len(owner.clock.getDelayedCalls()) == 1
    advance_to(owner.clock, 10.0)
    assert owner.send_times == [10.0]
    machine.ack_received(owner.last_id)
    machine.set_interval(60.0)
    advance_to(owner.clock, 69.5)
    assert owner.send_times == [10.0]
    advance_to(owner.clock, 70.0)
    assert owner.send_times == [10.0, 70.0]
    assert machine.interval == 60.0
    with pytest.raises(ValueError):
        machine.set_interval(0)


def test_short_interval_keeps_several_probes_in_flight():
    machine, owner = make(interval=1.0, timeout=5.0)
    machine.start()
    advance_to(owner.clock, 4.0)
    assert machine.in_flight == 4
    for _, probe_id in owner.sent:
        machine.ack_received(probe_id)
    assert machine.in_flight == 0
    advance_to(owner.clock, 9.5)
    assert machine.in_flight == 5, "bounded by timeout / interval"
    advance_to(owner.clock, 30.0)
    assert state(machine) is KeepAliveState.LOST
    assert machine.in_flight == 0


def test_stop_cancels_everything():
    machine, owner = make()
    machine.start()
    advance_to(owner.clock, 35.0)
    assert machine.in_flight == 1
    machine.stop()
    assert state(machine) is KeepAliveState.IDLE
    assert owner.clock.getDelayedCalls() == []
    assert machine.ack_received(owner.last_id) is None
    machine.traffic_received()
    machine.restart()
    assert state(machine) is KeepAliveState.IDLE, "restart does not revive a stopped machine"
    advance_to(owner.clock, 500.0)
    assert owner.warnings == []
    assert owner.losses == []
    assert owner.send_times == [25.0, 30.0, 35.0]
    assert machine.quality().probes_lost == 2, "measurements outlive stop"
    machine.start()
    assert len(owner.clock.getDelayedCalls()) == 1


def test_restart_after_lost():
    machine, owner = make()
    machine.start()
    advance_to(owner.clock, 50.0)
    assert state(machine) is KeepAliveState.LOST
    machine.ack_received(owner.last_id)
    machine.traffic_received()
    assert state(machine) is KeepAliveState.LOST, "only the owner's re-punch revives it"
    advance_to(owner.clock, 60.0)
    machine.restart()
    assert state(machine) is KeepAliveState.RUNNING
    assert machine.consecutive_failures == 0
    advance_to(owner.clock, 85.0)
    assert owner.send_times[-1] == 85.0
    owner.clock.advance(0.5)
    assert machine.ack_received(owner.last_id) == 0.5
    advance_to(owner.clock, 110.0)
    assert owner.send_times[-1] == 110.0
    assert owner.losses == [50.0]
    assert owner.warnings == [(40.0, 3)]


def test_restart_while_running_forgets_probes_in_flight():
    machine, owner = make()
    machine.start()
    advance_to(owner.clock, 30.0)
    machine.restart(probe_now=True)
    assert machine.consecutive_failures == 0
    assert machine.in_flight == 1
    assert owner.send_times == [25.0, 30.0, 30.0]
    assert len(owner.clock.getDelayedCalls()) == 1


def test_callbacks_may_restart_or_stop_the_machine():
    owner = Owner()
    restarting = KeepAliveMachine(
        send_probe=owner.send_probe,
        on_lost=lambda: restarting.restart(),
        **reactor_callables(owner.clock),
    )
    restarting.start()
    advance_to(owner.clock, 50.0)
    assert state(restarting) is KeepAliveState.RUNNING
    assert len(owner.clock.getDelayedCalls()) == 1
    restarting.stop()

    stopping = KeepAliveMachine(
        send_probe=owner.send_probe,
        on_warning=lambda failures: stopping.stop(),
        on_lost=owner.on_lost,
        **reactor_callables(owner.clock),
    )
    stopping.start()
    advance_to(owner.clock, 200.0)
    assert state(stopping) is KeepAliveState.IDLE
    assert owner.clock.getDelayedCalls() == []
    assert owner.losses == []


@contextmanager
def captured_log() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        yield observer
    finally:
        globalLogPublisher.removeObserver(observer)


def test_owner_errors_are_logged_not_raised():
    clock = Clock()

    def broken_send() -> object:
        raise OSError("network unreachable")

    def broken_lost() -> None:
        raise RuntimeError("owner bug")

    machine = KeepAliveMachine(
        send_probe=broken_send,
        on_lost=broken_lost,
        **reactor_callables(clock),
    )
    with captured_log() as events:
        machine.start(probe_now=True)
        assert machine.consecutive_failures == 1, "an unsendable probe has failed"
        advance_to(clock, 100.0)
    assert state(machine) is KeepAliveState.LOST
    assert clock.getDelayedCalls() == []
    failures = [e["log_failure"].value for e in events if "log_failure" in e]
    assert [type(f) for f in failures] == [OSError] * 5 + [RuntimeError]


def test_clock_going_back_gives_no_sample():
    times = iter([0.0, 10.0, 5.0])
    clock = Clock()
    ids = iter(range(10))
    machine = KeepAliveMachine(
        send_probe=lambda: next(ids),
        on_lost=lambda: None,
        schedule=clock.callLater,
        now=lambda: next(times),
    )
    machine.start()
    machine.restart(probe_now=True)
    assert machine.ack_received(0) == -5.0
    assert machine.rtt.srtt is None
    assert machine.consecutive_failures == 0


def test_quality_snapshot():
    machine, owner = make()
    assert machine.quality() == LinkQuality(
        rtt=None,
        rtt_latest=None,
        jitter=None,
        loss=0.0,
        probes_sent=0,
        probes_lost=0,
        consecutive_failures=0,
        last_ack_age=None,
    )
    machine.start()
    advance_to(owner.clock, 25.0)
    owner.clock.advance(1.0)
    machine.ack_received(owner.last_id)
    advance_to(owner.clock, 50.0)
    owner.clock.advance(2.0)
    machine.ack_received(owner.last_id)
    advance_to(owner.clock, 77.0)  # the probe at 75 is in flight until 80
    quality = machine.quality()
    assert quality == LinkQuality(
        rtt=1.125,
        rtt_latest=2.0,
        jitter=1 / 16,
        loss=0.0,
        probes_sent=3,
        probes_lost=0,
        consecutive_failures=0,
        last_ack_age=25.0,
    )
    advance_to(owner.clock, 80.0)
    assert machine.quality().loss == 1 / 3
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        quality.loss = 0.5  # type: ignore[misc]


def test_construction_is_validated():
    owner = Owner()
    common: dict[str, Any] = dict(
        send_probe=owner.send_probe, on_lost=owner.on_lost, **reactor_callables(owner.clock)
    )
    for bad in (
        {"interval": 0},
        {"interval": math.inf},
        {"timeout": -1.0},
        {"retry_interval": math.nan},
        {"warn_after": 0},
        {"warn_after": 4, "dead_after": 3},
    ):
        with pytest.raises(ValueError):
            KeepAliveMachine(**common, **bad)
    assert "idle" in repr(KeepAliveMachine(**common))


def test_interval_for_lifetime():
    assert interval_for_lifetime(120.0) == 60.0
    assert interval_for_lifetime(30.0, safety=0.8) == 24.0
    assert interval_for_lifetime(1.5) == 1.0
    assert interval_for_lifetime(1.5, floor=0.5) == 0.75
    for bad in (
        {"lifetime": 0.0},
        {"lifetime": math.inf},
        {"lifetime": 10.0, "safety": 0.0},
        {"lifetime": 10.0, "safety": 1.5},
        {"lifetime": 10.0, "floor": 0.0},
    ):
        with pytest.raises(ValueError):
            interval_for_lifetime(**bad)


def test_reactor_callables_use_the_reactor():
    clock = Clock()
    clock.advance(7.0)
    callables = reactor_callables(clock)
    assert callables["now"]() == 7.0
    handle = callables["schedule"](1.0, lambda: None)
    assert handle.active()
    assert clock.getDelayedCalls() == [handle]
    handle.cancel()


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
    clock callables and a minimal owner must stay under 2 KiB.  Measured
    on CPython 3.11: 1,740 bytes.  About 700 are the machine's own (the
    machine 232, the three estimators 232, their floats and the loss bits
    about 140, the tuple of probes in flight 104), 630 the DelayedCall
    with its bound method and keywords dict, 128 the two clock callables,
    220 the owner stand-in and its probe id, and the rest each Clock's
    bookkeeping.

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
