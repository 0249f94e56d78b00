"""
Keep-alive for a peer connection: when to probe, when the path is in
trouble, when the binding is gone, and how good the link is meanwhile.

Nothing here knows the wire format or owns a socket.  L{KeepAliveMachine}
is a pure state machine in the shape of magic-wormhole's C{TrafficTimer}:
its owner (the peer connection's C{DatagramProtocol}) hands it callables to
send a probe, to schedule a call and to read the time, and feeds it events
(an ACK arrived, any datagram arrived, a datagram was sent).  The machine
decides; the owner does the I/O.  So the decisions can be tested on a
C{task.Clock} with no network, and the owner's code stays a thin mapping
from datagrams to events.

The estimators (L{RTTEstimator}, L{JitterEstimator}, L{LossEstimator}) are
purer still: no clock at all, every time is passed in.

A machine is meant to exist once per connection, for thousands of
connections at once, so everything is slotted, the loss window is one
integer used as a bit field, and the machine keeps exactly one timer
armed however many things it is waiting for.  L{TimerQueue} then puts the
timers of thousands of machines on one reactor call between them.
"""

from __future__ import annotations

import enum
import math
import weakref
from collections.abc import Callable
from heapq import heappop, heappush
from typing import Protocol, TypedDict

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

__all__ = [
    "JitterEstimator",
    "KeepAliveMachine",
    "KeepAliveState",
    "LinkQuality",
    "LossEstimator",
    "RTTEstimator",
    "ReactorCallables",
    "TimerHandle",
    "TimerQueue",
    "interval_for_lifetime",
    "reactor_callables",
]

# Reactor time is a float; a timer that fires at C{t0 + (deadline - t0)}
# can land one rounding step before C{deadline}.  Anything due within this
# much of now is treated as due, so such a wake-up is never wasted.
_SLACK = 1e-9


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


# --- estimators ---
#
# Estimators are updated on every ACK of every connection, so they validate
# their settings once, at construction, and turn off attrs' hook on every
# assignment, which would triple the cost of an update.


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    _check_seconds(attribute.name, value)


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class RTTEstimator:
    """
    RFC 6298's smoothed round-trip time and its variation, and the
    retransmission timeout they give.

    RFC 6298 is written for TCP, but its reasoning (smooth the mean, track
    the spread, time out at mean plus four spreads) fits any request and
    answer over a path whose delay wanders, and it is what the other
    peer-to-peer stacks report, so numbers read the same everywhere.

    Karn's ambiguity does not arise for keep-alives: every probe carries
    its own id and is never retransmitted, so each answer times one
    transmission.

    @ivar min_rto: the least L{rto}; RFC 6298 says 1 second, which is what
        a keep-alive wants too (a fast path should not make the owner give
        up on an answer after a few milliseconds).
    @ivar max_rto: the greatest L{rto}; RFC 6298 allows 60 seconds or more.
    @ivar initial_rto: L{rto} before any sample (RFC 6298: 1 second).
    @ivar granularity: RFC 6298's clock granularity G, which keeps the RTO
        above SRTT when the variation decays to nothing.  Reactor time is a
        float with sub-millisecond resolution, so the default is 0 and
        C{min_rto} does that job.
    """

    ALPHA = 1 / 8
    BETA = 1 / 4
    K = 4

    min_rto: float = attrs.field(default=1.0, validator=_positive)
    max_rto: float = attrs.field(default=60.0, validator=_positive)
    initial_rto: float = attrs.field(default=1.0, validator=_positive)
    granularity: float = 0.0
    _srtt: float | None = attrs.field(default=None, init=False)
    _rttvar: float | None = attrs.field(default=None, init=False)
    _latest: float | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        if self.min_rto > self.max_rto:
            raise ValueError("min_rto must not exceed max_rto")
        if self.granularity < 0:
            raise ValueError("granularity must not be negative")

    def update(self, sample: float) -> None:
        """
        Take one round-trip measurement into account (RFC 6298 section 2).

        @raise ValueError: for a negative or non-finite sample, which can
            only come from a clock that jumped; it would drag SRTT below
            zero for many samples to come.
        """
        if not sample >= 0 or math.isinf(sample):
            raise ValueError(f"a round trip cannot take {sample!r} seconds")
        self._latest = sample
        if self._srtt is None or self._rttvar is None:
            self._srtt = sample
            self._rttvar = sample / 2
            return
        # RTTVAR first: the RFC defines it against the SRTT from before this sample.
        self._rttvar = (1 - self.BETA) * self._rttvar + self.BETA * abs(self._srtt - sample)
        self._srtt = (1 - self.ALPHA) * self._srtt + self.ALPHA * sample

    @property
    def srtt(self) -> float | None:
        """The smoothed round trip, or C{None} before the first sample."""
        return self._srtt

    @property
    def rttvar(self) -> float | None:
        """The round-trip variation, or C{None} before the first sample."""
        return self._rttvar

    @property
    def latest(self) -> float | None:
        """The most recent sample, unsmoothed, or C{None} before the first."""
        return self._latest

    @property
    def rto(self) -> float:
        """C{SRTT + max(G, 4 RTTVAR)}, kept within C{[min_rto, max_rto]}."""
        if self._srtt is None or self._rttvar is None:
            rto = self.initial_rto
        else:
            rto = self._srtt + max(self.granularity, self.K * self._rttvar)
        return min(self.max_rto, max(self.min_rto, rto))


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class JitterEstimator:
    """
    RFC 3550 section 6.4.1's interarrival jitter, from successive round
    trips.

    RFC 3550 defines the jitter from the change in transit time between
    successive packets, C{D = (Rj - Ri) - (Sj - Si)}, which needs no
    clock synchronisation because only differences of transit times are
    used.  A keep-alive and its ACK are timed on our clock alone (sent at
    C{S}, answered at C{R}), so the transit time of the exchange is its
    round trip, and C{D} is the difference between successive round
    trips.  We do not use the peer's send times: its clock is not ours, the
    wire format need not carry one, and one-way transit would also need
    our ACKs and the peer's probes to be paired up.  The cost is that the
    variation of both directions is summed, which is also what a caller
    sizing a timeout or a buffer for the round trip wants.

    As in RFC 3550, C{J} starts at 0 and moves by C{(|D| - J) / 16} per
    sample; the first sample only sets the reference, so L{jitter} is
    C{None} until there are two.
    """

    _previous: float | None = attrs.field(default=None, init=False)
    _jitter: float | None = attrs.field(default=None, init=False)

    def update(self, transit: float) -> None:
        """Take one transit time (here, one round trip) into account."""
        if self._previous is not None:
            d = abs(transit - self._previous)
            jitter = self._jitter or 0.0
            self._jitter = jitter + (d - jitter) / 16
        self._previous = transit

    @property
    def jitter(self) -> float | None:
        """The smoothed jitter in seconds, or C{None} before two samples."""
        return self._jitter


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class LossEstimator:
    """
    Which fraction of the last C{window} probes went unanswered.

    The window is one integer used as a bit field (bit 0 the newest probe,
    set when it was lost), so remembering a hundred outcomes costs about
    40 bytes, where a C{deque} of booleans would cost ten times that; this
    object exists once per connection.

    @ivar window: how many of the most recent outcomes L{fraction} covers.
    """

    window: int = attrs.field(default=100)
    _bits: int = attrs.field(default=0, init=False)
    _filled: int = attrs.field(default=0, init=False)
    _sent: int = attrs.field(default=0, init=False)
    _lost: int = attrs.field(default=0, init=False)

    @window.validator
    def _check_window(self, attribute: attrs.Attribute[int], value: int) -> None:
        if value < 1:
            raise ValueError("the loss window must hold at least one probe")

    def record(self, acknowledged: bool) -> None:
        """Record the fate of one probe: answered, or given up on."""
        self._bits = ((self._bits << 1) | (not acknowledged)) & ((1 << self.window) - 1)
        self._filled = min(self._filled + 1, self.window)
        self._sent += 1
        self._lost += not acknowledged

    @property
    def fraction(self) -> float:
        """Lost over recorded, within the window; 0 before any probe is decided."""
        if not self._filled:
            return 0.0
        return self._bits.bit_count() / self._filled

    @property
    def recorded(self) -> int:
        """How many outcomes the window holds now (at most C{window})."""
        return self._filled

    @property
    def sent(self) -> int:
        """Probes whose fate was recorded, ever (not only within the window)."""
        return self._sent

    @property
    def lost(self) -> int:
        """Probes recorded as lost, ever (not only within the window)."""
        return self._lost


@attrs.frozen
class LinkQuality:
    """
    A snapshot of one peer connection's link, for logs, metrics and path
    choice.

    @ivar rtt: the smoothed round trip (RFC 6298 SRTT), or C{None} before
        any probe was answered.
    @ivar rtt_latest: the last round trip measured, unsmoothed.
    @ivar jitter: RFC 3550 jitter of the round trip, or C{None} before two
        answers.
    @ivar loss: the fraction of recent probes that went unanswered.
    @ivar probes_sent: probes sent, ever; some may still be in flight, and
        probes abandoned by L{KeepAliveMachine.stop} or
        L{KeepAliveMachine.restart} are neither answered nor lost.
    @ivar probes_lost: probes that timed out, ever.
    @ivar consecutive_failures: the current streak of unanswered probes.
    @ivar last_ack_age: seconds since the last answered probe, or C{None}
        if none was answered.
    """

    rtt: float | None
    rtt_latest: float | None
    jitter: float | None
    loss: float
    probes_sent: int
    probes_lost: int
    consecutive_failures: int
    last_ack_age: float | None


# --- the machine ---


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

    The measured lifetime is only as good as the bisection that found it,
    and NATs differ in which traffic refreshes a binding (RFC 4787 REQ-6
    requires outbound packets to; inbound ones may or may not), so the
    default leaves room for a whole lost exchange: with half the lifetime,
    one probe can be lost and the next still arrives in time.  The floor keeps a NAT with a
    uselessly short timeout from turning keep-alive into a flood.

    @param lifetime: seconds an idle binding survived
        (L{twisted_nat.behavior.measure_binding_lifetime}).
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

    Probes go out every C{interval} seconds.  A probe not answered within
    C{timeout} is a failure.  Once a probe has failed, the next one goes
    out C{retry_interval} after it rather than a whole C{interval} later,
    as TCP keep-alive does (C{TCP_KEEPINTVL}): a healthy link costs one
    probe per interval, and a broken one is found in about
    C{interval + dead_after * retry_interval} seconds (50 s with the
    defaults) instead of C{dead_after} whole intervals.

    At C{warn_after} consecutive failures C{on_warning(failures)} is
    called, once per streak, so the owner can start preparing a new path
    (a relay candidate, say) while the old one may still recover.  At
    C{dead_after} consecutive failures the binding is declared lost:
    C{on_lost()} is called once, probing stops, and nothing more happens
    until the owner has punched again and calls L{restart}.  C{dead_after}
    defaults to 5, two more than the warning: declaring a connection lost
    makes the owner do something expensive and disruptive (signal the peer
    through rendezvous and punch again), so it must take more than bad
    luck.  With 10% of exchanges lost at random, five failures in a row
    happen once in 100,000 probes (about once a month of 25 s probes),
    three in a row once in a thousand (several times a day).  The five
    failures span 25 s with the defaults, close to the 30 s after which
    RFC 7675 withdraws consent from an ICE path.

    What resets a streak is proof that the peer hears us or we hear it: an
    ACK (L{ack_received}), a probe from the peer (L{probe_received}), or
    any authenticated datagram from it (L{traffic_received}).  A late ACK,
    one for a probe already counted lost, is ignored: the probe stays lost
    (the loss estimate must not count it twice, and the streak it belonged
    to has already been judged), while the datagram that carried it still
    proves liveness through L{traffic_received}, which the owner calls for
    every authenticated datagram.

    Outbound traffic postpones probes (L{traffic_sent}), because most NATs
    refresh a binding on outbound packets (RFC 4787 REQ-6) and a probe on
    a busy connection is waste.  But outbound traffic proves nothing about
    the path, so the postponement lasts only while the peer is heard from
    too: the next probe is due C{interval} after the older of the last
    datagram sent and the last datagram heard (and never sooner than
    C{interval} after the last probe).  A connection that only sends (to a
    peer that has vanished) still probes once per interval, and still
    finds out.  Inbound traffic alone does not postpone probes: for many
    NATs it does not refresh the binding.

    The owner supplies:
      - C{send_probe() -> probe id}: send one KEEP_ALIVE and return what
        will identify its ACK (a transaction id, say).  Ids are compared
        with C{==} and must be unique among probes in flight; the ACK must
        not be delivered from inside C{send_probe}.
      - C{schedule(delay, function) -> handle}, C{now() -> seconds}: a
        clock; L{reactor_callables} makes both from an C{IReactorTime}.
      - C{on_warning(failures)} and C{on_lost()}, the two verdicts.

    Answering the peer's probes is the owner's job (a KEEP_ALIVE gets a
    KEEP_ALIVE_ACK); the machine only hears of them through
    L{probe_received}.

    The machine keeps one timer armed while running and none otherwise.
    Events that only make the next probe later (ACKs, traffic) do not
    touch the timer: the timer wakes at the old time, sees nothing due and
    sleeps until the new one, so a busy connection does not cancel and
    reschedule a timer per datagram.
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
        _check_seconds("interval", interval)
        _check_seconds("timeout", timeout)
        if retry_interval is None:
            retry_interval = timeout
        _check_seconds("retry_interval", retry_interval)
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
        # Bumped whenever the machine starts, stops, restarts or is lost, so
        # code that called out to the owner can tell that the owner's
        # callback changed the machine under it.
        self._epoch = 0
        self._timer: TimerHandle | None = None
        # (probe id, send time) in send order.  Deadlines are send time plus
        # a fixed timeout, so the first entry always expires first.  There
        # are at most about timeout / min(interval, retry_interval) + 1, one
        # at most with the defaults, so a tuple scanned linearly is as fast
        # as a dict and costs 100 bytes less per connection (nothing at all
        # when empty, as the empty tuple is shared).
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
        Probe every C{seconds} from now on, for instance
        L{interval_for_lifetime} of a measured binding lifetime.

        The timer is re-armed at once, because a shorter interval may make
        a probe due sooner than the timer would wake: waiting for it could
        let the binding expire.
        """
        _check_seconds("interval", seconds)
        self._interval = seconds
        if self._state is KeepAliveState.RUNNING:
            self._arm(self._now())

    # --- lifecycle ---

    def start(self, probe_now: bool = False) -> None:
        """
        Begin probing; nothing happens if already running or lost.

        The first probe goes out one interval from now: a connection is
        started just after punching, so its binding is fresh and the peer
        has just been heard.  C{probe_now} sends one at once instead, to
        measure the round trip early.
        """
        if self._state is not KeepAliveState.IDLE:
            return
        self._begin(probe_now)

    def restart(self, probe_now: bool = False) -> None:
        """
        The owner has a working path again (after a re-punch, usually in
        answer to C{on_lost}): forget the streak and probes in flight, and
        probe as after L{start}.

        This does nothing while idle: only L{start} begins probing, so a
        stopped machine is never revived by a re-punch finishing late.
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
        An authenticated datagram came from the peer: the path works
        inbound and the peer is alive, so the failure streak ends.  Probes
        are not postponed (see the class docstring).
        """
        if self._state is KeepAliveState.RUNNING:
            self._heard(self._now())

    def probe_received(self) -> None:
        """
        The peer sent us a probe (which the owner answers): as
        L{traffic_received}, and counted.
        """
        if self._state is KeepAliveState.RUNNING:
            self._probes_received += 1
            self._heard(self._now())

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
            if self._in_flight[0][1] + self._timeout > now + _SLACK:
                break
            self._in_flight = self._in_flight[1:]
            self._loss.record(False)
            self._failed(now)
            if epoch != self._epoch:
                return
        if self._next_probe_due() <= now + _SLACK:
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


def _check_seconds(name: str, value: float) -> None:
    if not value > 0 or math.isinf(value):
        raise ValueError(f"{name} must be a positive, finite number of seconds, not {value!r}")


# --- the reactor ---


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


# --- many machines, one reactor timer ---


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

    Every reactor C{DelayedCall} costs about 450 bytes, is pushed onto and
    popped off the reactor's heap with a comparison written in Python, and
    costs a turn of the reactor loop when it fires; 10,000 kept-alive
    connections send 400 probes a second and wake up twice per probe.

    Here time is cut into steps of C{resolution} seconds, and a timer is a
    small handle in the list of the step its deadline falls in (a timing
    wheel, as kernels keep their timers).  One reactor call is made, for
    the end of the earliest step that has a timer, and it calls that
    step's timers in the order they were scheduled.  So timers fire up to
    C{resolution} late, never early, and a second's worth of keep-alive
    work costs at most 1 / C{resolution} turns of the reactor however many
    connections there are.  Probes then leave in small bursts, their
    answers arrive together, and the reactor reads several per wake-up.
    Scheduling costs a list append and a dictionary lookup, against a heap
    of every pending timer, whose size makes each comparison a cache miss
    once there are thousands.

    A call that fails is logged and the rest are still called.  A
    cancelled timer leaves its step's list at once (a few hundred entries
    at most with keep-alive's numbers), so nothing cancelled stays in
    memory; when no timer is left, the reactor call is cancelled too, and
    an idle queue leaves nothing on the clock.
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
        _check_seconds("resolution", resolution)
        self._schedule = schedule
        self._now = now
        self._resolution = resolution
        # Step number (deadline / resolution, rounded up) -> its timers; and
        # a heap of the step numbers with timers (a few hundred, however
        # many timers there are; a step emptied by cancelling may linger).
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
        ended = math.floor((self._now() + _SLACK) / self._resolution)
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
