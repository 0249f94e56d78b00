"""Link-quality estimators: RFC 6298 round trip, RFC 3550 jitter, loss window."""

from __future__ import annotations

import math

import pytest

from twisted_nat.keepalive import JitterEstimator, LossEstimator, RTTEstimator

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
