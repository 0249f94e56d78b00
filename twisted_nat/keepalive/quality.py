"""
How good a peer connection's link is: round trip (RFC 6298), jitter
(RFC 3550) and loss, from the fate of keep-alive probes.

These are pure measurements: no clock, no socket; every time is passed in.
They exist once per connection and are updated on every answered probe,
so they are small (the loss window is one integer used as a bit field) and
validate their settings once, at construction, rather than on every
assignment.
"""

from __future__ import annotations

import math

import attrs

from twisted_nat.keepalive.timers import check_seconds

__all__ = ["JitterEstimator", "LinkQuality", "LossEstimator", "RTTEstimator"]


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    check_seconds(attribute.name, value)


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

    RFC 3550 takes C{D} as the change in transit time between successive
    packets.  A probe and its ACK are both timed on our own clock, so the
    transit time here is the round trip and C{D} the change between
    successive round trips: no peer clock or timestamp is needed, and the
    variation of both directions is summed, which is what a caller sizing a
    timeout or a buffer for the round trip wants.

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
    set when it was lost) rather than a container of booleans, because this
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
