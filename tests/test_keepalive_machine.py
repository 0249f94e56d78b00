"""Keep-alive decisions, event by event, on a Clock."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
from twisted.internet.task import Clock

from tests.support.keepalive import Owner, advance_to, captured_log, make, state
from twisted_nat.keepalive import (
    KeepAliveMachine,
    KeepAliveState,
    LinkQuality,
    interval_for_lifetime,
    reactor_callables,
)


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


def test_traffic_received_ends_no_streak():
    """Only an ACK to our own probe proves our datagrams still arrive (RFC 7675)."""
    machine, owner = make()
    machine.start()
    advance_to(owner.clock, 35.0)
    assert machine.consecutive_failures == 2
    machine.traffic_received()
    assert machine.consecutive_failures == 2
    advance_to(owner.clock, 40.0)
    assert machine.consecutive_failures == 3
    assert owner.warnings == [(40.0, 3)]


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


def test_probe_received_counts_but_proves_nothing():
    """A captured probe replayed by anyone on the path must not keep a dead path alive."""
    machine, owner = make()
    machine.start()
    advance_to(owner.clock, 35.0)
    assert (machine.consecutive_failures, machine.probes_received) == (2, 0)
    for t in range(35, 60):
        advance_to(owner.clock, float(t))
        machine.probe_received()
    assert machine.probes_received == 15, "counted while running"
    assert owner.losses == [50.0]


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
