"""
L{Latencies}: durations counted in fixed buckets, with their sum and count,
so that timing every Redis command, or every punch, costs constant memory.
Pure; exported as Prometheus histograms by L{twisted_nat.metrics}.
"""

from __future__ import annotations

from bisect import bisect_left

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Upper bounds in seconds: from a loopback round trip to Redis's reply timeout."""

SETUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0)
"""Upper bounds in seconds for the time a punch takes to find its path."""


class Latencies:
    """How many durations were at most each bucket's bound, their sum, and count."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def record(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self._counts[bisect_left(self.buckets, seconds)] += 1
        self.sum += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, float]]:
        """(bound, how many up to it) for every bucket and C{+Inf}, as Prometheus has them."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self.buckets, self._counts, strict=False):
            total += count
            out.append((repr(bound), total))
        out.append(("+Inf", self.count))
        return out
