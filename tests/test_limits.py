"""The rate limits strangers meet: token buckets, per-key buckets, bounded drop logs."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, capturedLogs

from twisted_nat.limits import DropLog, KeyedBuckets, TokenBucket


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0)
    assert [bucket.take(0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.4)
    assert bucket.take(0.5)
    assert not bucket.take(0.5)
    # Idle time refills to the burst, never beyond it.
    assert [bucket.take(100) for _ in range(4)] == [True, True, True, False]


def test_a_refused_action_costs_nothing() -> None:
    bucket = TokenBucket(rate=1, burst=1, now=0)
    assert bucket.take(0)
    for _ in range(100):
        assert not bucket.take(0.5)
    assert bucket.take(1.0)


def test_a_bucket_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)


def test_keys_have_their_own_buckets() -> None:
    buckets: KeyedBuckets[str] = KeyedBuckets(rate=1, burst=1, max_keys=10)
    assert buckets.take("a", 0)
    assert not buckets.take("a", 0)
    assert buckets.take("b", 0)


def test_fresh_keys_cannot_reset_a_limit_or_grow_memory() -> None:
    buckets: KeyedBuckets[int] = KeyedBuckets(rate=1, burst=1, max_keys=3)
    assert buckets.take(0, 0)
    # A flood of new keys while every bucket is still spent: refused.
    assert [buckets.take(k, 0) for k in range(1, 100)] == [True, True] + [False] * 97
    assert len(buckets) == 3
    assert not buckets.take(0, 0)
    # Refilled buckets are forgotten to make room.
    assert buckets.take(500, 10)
    assert len(buckets) == 3


def test_drops_are_all_counted_but_logged_at_a_bounded_rate() -> None:
    clock = Clock()
    drops = DropLog(Logger(namespace="t"), clock, rate=1, burst=2)
    with capturedLogs() as events:
        for _ in range(1000):
            drops.drop("malformed", "dropped {size} bytes", size=3)
        assert drops.counts["malformed"] == 1000
        assert len(events) == 2
        clock.advance(1)
        drops.drop("short", "dropped {size} bytes", size=1)
    assert len(events) == 3
    assert "998 more dropped" in events[-1]["suffix"]


def test_descriptors_left_keeps_the_reserve_free() -> None:
    """Counted against the real limit: opening one more file leaves one fewer."""
    import resource
    import tempfile

    from twisted_nat.limits import DESCRIPTOR_RESERVE, descriptors_left

    before = descriptors_left()
    if before is None:
        pytest.skip("no descriptor limit, or no /proc/self/fd, on this machine")
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert before <= soft - DESCRIPTOR_RESERVE
    with tempfile.TemporaryFile() as held:
        assert held.fileno() >= 0
        assert descriptors_left() == before - 1
    assert descriptors_left(reserve=soft) == 0
