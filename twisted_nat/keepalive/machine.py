"""
L{KeepAliveMachine}: when to probe a peer connection, when its path is in
trouble and when its binding is gone.  A pure decision machine, in the
shape of magic-wormhole's C{TrafficTimer}: it knows no wire format and owns
no socket; its owner sends, supplies a clock and feeds it events, so the
decisions are tested on a C{task.Clock} with no network.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable

from twisted.logger import Logger

from twisted_nat.keepalive.quality import JitterEstimator, LinkQuality, LossEstimator, RTTEstimator
from twisted_nat.keepalive.timers import SLACK, Now, Schedule, TimerHandle, check_seconds

__all__ = ["KeepAliveMachine", "KeepAliveState", "interval_for_lifetime"]


class KeepAliveState(enum.Enum):
    """Where a L{KeepAliveMachine} is in its life."""

    IDLE = "idle"
    """Not started, or stopped: no timer, no callbacks."""
    RUNNING = "running"
    """Probing."""
    LOST = "lost"
    """The binding is considered gone; waiting for the owner to re-punch."""


def interval_for_lifetime(lifetime: float, safety: float = 0.5, floor: float = 1.0) -> float:
    """
    A keep-alive interval for a NAT binding measured to survive
    C{lifetime} seconds of silence.

    The measurement is only as good as the bisection that found it, and
    NATs differ in which traffic refreshes a binding, so the default
    leaves room for a whole lost exchange: with half the lifetime, one
    probe can be lost and the next still arrives in time.  The floor keeps
    a NAT with a uselessly short timeout from turning keep-alive into a
    flood.

    @param lifetime: seconds an idle binding survived
        (L{twisted_nat.nat.measure_binding_lifetime}).
    @param safety: the fraction of the lifetime to use, in C{(0, 1]}.
    @param floor: the shortest interval ever returned.
    """
    if not lifetime > 0 or math.isinf(lifetime):
        raise ValueError(f"a binding lifetime must be positive and finite, not {lifetime!r}")
    if not 0 < safety <= 1:
        raise ValueError(f"safety must be in (0, 1], not {safety!r}")
    if not floor > 0:
        raise ValueError(f"floor must be positive, not {floor!r}")
    return max(floor, lifetime * safety)


def _ignore_warning(failures: int) -> None:
    pass


class KeepAliveMachine:
    """
    When to send keep-alive probes on one peer connection, and what their
    fate means.

    Probes go out every C{interval} seconds; one unanswered within
    C{timeout} is a failure, and the next probe then goes out
    C{retry_interval} later rather than a whole interval (as TCP's
    C{TCP_KEEPINTVL}), so a broken path is found in about
    C{interval + dead_after * retry_interval} seconds.  At C{warn_after}
    consecutive failures C{on_warning(failures)} is called once per
    streak, so the owner can prepare another path while this one may
    still recover; at C{dead_after}, C{on_lost()} is called once and
    probing stops until L{restart}.  A loss makes the owner signal the
    peer and punch again, so by default it takes two failures more than
    the warning (at 10% random loss, five in a row are a hundred times
    rarer than three): 25 s, near RFC 7675's 30 s consent timeout.

    A streak ends only on an ACK to one of our own probes in flight
    (L{ack_received}), as RFC 7675's consent freshness counts only
    responses to fresh requests: the peer's probes (L{probe_received}) and
    its data (L{traffic_received}) prove nothing, since a captured probe
    can be replayed by anyone on the path.  A late ACK, for a probe
    already counted lost, is ignored, so no loss is counted twice.
    Outbound traffic (L{traffic_sent}) postpones probes, since most NATs
    refresh a binding on outbound packets (RFC 4787 REQ-6), but only while
    fresh data comes back too (the owner reports only data that passed its
    replay window): the next probe is due C{interval} after the older of
    the last datagram sent and heard, so a connection sending to a
    vanished peer still finds out.  Inbound traffic alone postpones
    nothing: many NATs do not refresh a binding on it.

    The owner supplies C{send_probe() -> probe id} (ids are compared with
    C{==} and unique among probes in flight; the ACK is never delivered
    from inside C{send_probe}), a clock (C{schedule} and C{now}, which
    L{reactor_callables} takes from a reactor) and the verdicts
    C{on_warning} and C{on_lost}.  It answers the peer's probes itself and
    reports them to L{probe_received}.

    One timer is armed while running, none otherwise.  Events that only
    make the next probe later leave it alone (it wakes, finds nothing due
    and sleeps on), so a busy connection does not reschedule a timer per
    datagram.
    """

    __slots__ = (
        "_dead_after",
        "_epoch",
        "_in_flight",
        "_interval",
        "_jitter",
        "_last_ack",
        "_last_heard",
        "_last_probe",
        "_last_sent",
        "_loss",
        "_now",
        "_on_lost",
        "_on_warning",
        "_probes_received",
        "_probes_sent",
        "_retry_interval",
        "_rtt",
        "_schedule",
        "_send_probe",
        "_state",
        "_streak",
        "_timeout",
        "_timer",
        "_warn_after",
        "_warned",
    )

    log = Logger()

    def __init__(
        self,
        *,
        send_probe: Callable[[], object],
        schedule: Schedule,
        now: Now,
        on_lost: Callable[[], object],
        on_warning: Callable[[int], object] = _ignore_warning,
        interval: float = 25.0,
        timeout: float = 5.0,
        retry_interval: float | None = None,
        warn_after: int = 3,
        dead_after: int = 5,
        rtt: RTTEstimator | None = None,
        loss: LossEstimator | None = None,
    ) -> None:
        """
        @param interval: seconds between probes on a quiet, healthy
            connection.  25 s is what WireGuard's persistent keep-alive
            uses, below the 30 s UDP timeout of the most impatient common
            NATs; L{set_interval} adapts it to a measured lifetime.
        @param timeout: seconds to wait for a probe's ACK.
        @param retry_interval: seconds from a failed probe to the next;
            C{None} means C{timeout}, so during a streak a new probe goes
            out as soon as the previous one is given up on.  Never longer
            than C{interval}.
        @param warn_after: consecutive failures before C{on_warning}.
        @param dead_after: consecutive failures before C{on_lost}; at
            least C{warn_after}.
        @param rtt: the round-trip estimator, to set its RTO bounds.
        @param loss: the loss estimator, to set its window.
        """
        check_seconds("interval", interval)
        check_seconds("timeout", timeout)
        if retry_interval is None:
            retry_interval = timeout
        check_seconds("retry_interval", retry_interval)
        if warn_after < 1 or dead_after < warn_after:
            raise ValueError("need 1 <= warn_after <= dead_after")
        self._send_probe = send_probe
        self._schedule = schedule
        self._now = now
        self._on_lost = on_lost
        self._on_warning = on_warning
        self._interval = interval
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._warn_after = warn_after
        self._dead_after = dead_after
        self._rtt = rtt if rtt is not None else RTTEstimator()
        self._jitter = JitterEstimator()
        self._loss = loss if loss is not None else LossEstimator()
        self._state = KeepAliveState.IDLE
        # Bumped on every start, stop, restart and loss, so code that called
        # the owner can tell that the callback changed the machine under it.
        self._epoch = 0
        self._timer: TimerHandle | None = None
        # (probe id, send time) in send order.  Deadlines are send time plus
        # a fixed timeout, so the first entry always expires first.  There
        # are at most about timeout / min(interval, retry_interval) + 1, so a
        # tuple scanned linearly serves, smaller than a dict (and shared
        # when empty).
        self._in_flight: tuple[tuple[object, float], ...] = ()
        self._streak = 0
        self._warned = False
        self._probes_sent = 0
        self._probes_received = 0
        self._last_sent = 0.0
        self._last_heard = 0.0
        self._last_probe = 0.0
        self._last_ack: float | None = None

    def __repr__(self) -> str:
        return (
            f"<KeepAliveMachine {self._state.value} interval={self._interval}"
            f" failures={self._streak} in_flight={len(self._in_flight)}>"
        )

    # --- configuration and inspection ---

    @property
    def state(self) -> KeepAliveState:
        return self._state

    @property
    def interval(self) -> float:
        return self._interval

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def consecutive_failures(self) -> int:
        return self._streak

    @property
    def in_flight(self) -> int:
        """Probes sent and neither answered nor given up on yet."""
        return len(self._in_flight)

    @property
    def probes_received(self) -> int:
        """The peer's probes the owner told us about."""
        return self._probes_received

    @property
    def rtt(self) -> RTTEstimator:
        return self._rtt

    @property
    def jitter(self) -> JitterEstimator:
        return self._jitter

    @property
    def loss(self) -> LossEstimator:
        return self._loss

    def quality(self) -> LinkQuality:
        """The link as measured so far."""
        return LinkQuality(
            rtt=self._rtt.srtt,
            rtt_latest=self._rtt.latest,
            jitter=self._jitter.jitter,
            loss=self._loss.fraction,
            probes_sent=self._probes_sent,
            probes_lost=self._loss.lost,
            consecutive_failures=self._streak,
            last_ack_age=None if self._last_ack is None else self._now() - self._last_ack,
        )

    def set_interval(self, seconds: float) -> None:
        """
        Probe every C{seconds} from now on (say, L{interval_for_lifetime} of
        a measured lifetime).  The timer is re-armed at once: a shorter
        interval may make a probe due before the timer would wake.
        """
        check_seconds("interval", seconds)
        self._interval = seconds
        if self._state is KeepAliveState.RUNNING:
            self._arm(self._now())

    # --- lifecycle ---

    def start(self, probe_now: bool = False) -> None:
        """
        Begin probing, unless already running or lost.  The first probe goes
        out one interval from now, as the binding was just punched;
        C{probe_now} sends one at once instead, to measure the round trip
        early.
        """
        if self._state is not KeepAliveState.IDLE:
            return
        self._begin(probe_now)

    def restart(self, probe_now: bool = False) -> None:
        """
        The owner has a working path again (after a re-punch, usually for
        C{on_lost}): forget the streak and probes in flight, and probe as
        after L{start}.  Idle, it does nothing, so a re-punch finishing late
        never revives a stopped machine.
        """
        if self._state is KeepAliveState.IDLE:
            return
        self._begin(probe_now)

    def stop(self) -> None:
        """
        Cancel the timer and forget the probes in flight; no callback is
        made until L{start} is called again.  The measurements are kept,
        so L{quality} still describes the link.
        """
        self._state = KeepAliveState.IDLE
        self._halt()

    def _begin(self, probe_now: bool) -> None:
        self._halt()
        now = self._now()
        self._state = KeepAliveState.RUNNING
        self._streak = 0
        self._warned = False
        self._last_sent = self._last_heard = self._last_probe = now
        if probe_now:
            epoch = self._epoch
            self._probe(now)
            if epoch != self._epoch:
                return
        self._arm(now)

    def _halt(self) -> None:
        self._epoch += 1
        self._in_flight = ()
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    # --- events ---

    def ack_received(self, probe_id: object) -> float | None:
        """
        The peer answered a probe.

        @return: the round trip measured (negative, and not used, if the
            clock went back), or C{None} if C{probe_id} is not in flight
            (unknown, already answered, or already counted lost), in which
            case nothing changes.
        """
        if self._state is not KeepAliveState.RUNNING:
            return None
        sent = self._take(probe_id)
        if sent is None:
            self.log.debug("ignored ACK for a probe not in flight: {probe_id!r}", probe_id=probe_id)
            return None
        now = self._now()
        sample = now - sent
        self._loss.record(True)
        if sample >= 0:
            self._rtt.update(sample)
            self._jitter.update(sample)
        else:
            self.log.warn("the clock went back {seconds:.3f}s; no RTT sample", seconds=-sample)
        self._last_ack = now
        self._heard(now)
        return sample

    def traffic_received(self) -> None:
        """
        Fresh authenticated data came from the peer (past the owner's
        replay window): with traffic sent, it postpones probes (see the
        class docstring).  It ends no streak: only an ACK proves that our
        own datagrams still arrive.
        """
        if self._state is KeepAliveState.RUNNING:
            self._last_heard = self._now()

    def probe_received(self) -> None:
        """
        The peer sent us a probe (which the owner answers): counted, and
        nothing more, as anyone on the path can replay one.
        """
        if self._state is KeepAliveState.RUNNING:
            self._probes_received += 1

    def traffic_sent(self) -> None:
        """
        The owner sent the peer a datagram, which refreshed the binding:
        the next probe may wait (see the class docstring).
        """
        if self._state is KeepAliveState.RUNNING:
            self._last_sent = self._now()

    def _heard(self, now: float) -> None:
        self._last_heard = now
        self._streak = 0
        self._warned = False

    # --- the timer ---

    def _next_probe_due(self) -> float:
        if self._streak:
            return self._last_probe + min(self._retry_interval, self._interval)
        # Traffic postpones a probe only while it flows both ways; the probe
        # itself counts as one way, so a silent peer is probed every interval.
        refreshed = min(self._last_sent, self._last_heard)
        return max(self._last_probe, refreshed) + self._interval

    def _arm(self, now: float) -> None:
        wake = self._next_probe_due()
        if self._in_flight:
            wake = min(wake, self._in_flight[0][1] + self._timeout)
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self._timer = self._schedule(max(0.0, wake - now), self._wake)

    def _wake(self) -> None:
        self._timer = None
        if self._state is not KeepAliveState.RUNNING:
            return
        epoch = self._epoch
        now = self._now()
        while self._in_flight:
            if self._in_flight[0][1] + self._timeout > now + SLACK:
                break
            self._in_flight = self._in_flight[1:]
            self._loss.record(False)
            self._failed(now)
            if epoch != self._epoch:
                return
        if self._next_probe_due() <= now + SLACK:
            self._probe(now)
            if epoch != self._epoch:
                return
        self._arm(now)

    def _probe(self, now: float) -> None:
        epoch = self._epoch
        try:
            probe_id = self._send_probe()
        except Exception:
            self.log.failure("sending a keep-alive probe failed")
            # Unanswerable, so failed: the path is certainly not working.
            self._probes_sent += 1
            self._last_probe = now
            self._loss.record(False)
            self._failed(now)
            return
        self._probes_sent += 1
        self._last_sent = self._last_probe = now
        if epoch != self._epoch:
            # send_probe stopped or restarted us: this probe belongs to no one.
            return
        # A reused id replaces its predecessor, and moves to the end so the
        # send order (and with it the expiry order) still holds.
        self._take(probe_id)
        self._in_flight += ((probe_id, now),)

    def _take(self, probe_id: object) -> float | None:
        """Remove C{probe_id} from the probes in flight; its send time, if it was there."""
        for index, (candidate, sent) in enumerate(self._in_flight):
            if candidate == probe_id:
                self._in_flight = self._in_flight[:index] + self._in_flight[index + 1 :]
                return sent
        return None

    def _failed(self, now: float) -> None:
        self._streak += 1
        failures = self._streak
        self.log.debug("keep-alive probe unanswered ({failures} in a row)", failures=failures)
        # The warning comes first even when warn_after == dead_after, so that
        # every loss is announced by exactly one warning in its streak.
        if failures >= self._warn_after and not self._warned:
            self._warned = True
            self.log.info("{failures} keep-alives in a row unanswered", failures=failures)
            epoch = self._epoch
            self._call(self._on_warning, failures)
            if epoch != self._epoch:
                return
        if self._streak >= self._dead_after:
            self._state = KeepAliveState.LOST
            self._halt()
            self.log.info(
                "peer binding lost after {failures} unanswered keep-alives", failures=failures
            )
            self._call(self._on_lost)

    def _call(self, function: Callable[..., object], *args: object) -> None:
        """Call the owner back; its bugs are logged, never left to corrupt our state."""
        try:
            function(*args)
        except Exception:
            self.log.failure("keep-alive callback {function!r} failed", function=function)
