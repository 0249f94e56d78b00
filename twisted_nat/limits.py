"""
Rate limits for what strangers can make us do: act (answer, probe, accept)
and log.  Pure objects; the caller passes the time, so they are tested
without a clock.
"""

from __future__ import annotations

import os
import resource
from collections import Counter, OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from twisted_nat.errors import ConfigurationError

K = TypeVar("K", bound=Hashable)


def positive(instance: object, attribute: Any, value: float) -> None:
    """An C{attrs} validator for a limit or a rate of a setting: more than 0."""
    if not value > 0:
        raise ConfigurationError(f"{attribute.name} must be positive ({value})")


class TokenBucket:
    """
    The token bucket of traffic shaping: C{burst} actions at once, then
    C{rate} a second on average.  A refused action takes no token.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float = 0.0) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a bucket needs rate > 0 and burst >= 1, not {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Whether an action costing C{cost} may happen at C{now}; if so, pay for it."""
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
        if self._tokens < cost - 1e-9:  # a refill computed to within rounding
            return False
        self._tokens = max(0.0, self._tokens - cost)
        return True

    def ready_at(self, cost: float = 1.0) -> float:
        """When the bucket will hold C{cost} tokens (a time already past if it does)."""
        return self._stamp + max(0.0, cost - self._tokens) / self.rate

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled completely: forgetting it changes nothing."""
        return self._tokens + (now - self._stamp) * self.rate >= self.burst


class KeyedBuckets(Generic[K]):
    """
    One L{TokenBucket} per key (a peer key, a source address), at most
    C{max_keys} of them: when full, the least recently used bucket that has
    refilled is forgotten; if none has, the new key is refused, so a flood
    of fresh keys cannot reset anyone's limit or grow memory.
    """

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets

    def take(self, key: K, now: float, cost: float = 1.0) -> bool:
        """Whether C{key} may act at C{now}; if so, it pays C{cost}."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys and not self._forget_one(now):
                return False
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now, cost)

    def _forget_one(self, now: float) -> bool:
        for key, bucket in self._buckets.items():
            if bucket.full(now):
                del self._buckets[key]
                return True
        return False


class DropLog:
    """
    Counts input dropped by reason, and logs it at a bounded rate: at most
    C{burst} lines at once and C{rate} a second after that, each saying how
    many drops went unlogged since the last line.  Malformed or hostile
    input can then cost neither memory nor log space beyond a fixed amount.
    """

    def __init__(
        self,
        log: Logger,
        clock: IReactorTime,
        rate: float = 0.2,
        burst: float = 5,
        what: str = "dropped",
    ) -> None:
        self.log = log
        self.clock = clock
        self.what = what
        self.counts: Counter[str] = Counter()
        self._bucket = TokenBucket(rate, burst, clock.seconds())
        self._unlogged = 0

    def drop(self, reason: str, format: str, **fields: Any) -> None:
        """Count one drop for C{reason}; log C{format} with C{fields} if the rate allows."""
        self.counts[reason] += 1
        if not self._bucket.take(self.clock.seconds()):
            self._unlogged += 1
            return
        unlogged, self._unlogged = self._unlogged, 0
        suffix = f" ({unlogged} more {self.what} since the last report)" if unlogged else ""
        self.log.warn(format + "{suffix}", suffix=suffix, **fields)


DESCRIPTOR_RESERVE = 64
"""
Descriptors kept free below the process's limit for everything strangers
cannot ask for: listening sockets, the registry's files, the log.
"""


def descriptors_left(reserve: int = DESCRIPTOR_RESERVE) -> int | None:
    """
    How many more file descriptors this process may open and still keep
    C{reserve} free under its soft C{RLIMIT_NOFILE}; None where that
    cannot be known (no limit, or no C{/proc/self/fd} to count what is open).
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError:
        return None
    return max(0, soft - used - reserve)
