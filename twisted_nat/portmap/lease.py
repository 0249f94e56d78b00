"""
When the mapper asks a gateway again, pure: renew at half the lease,
retry a failed renewal within what is left of it, and search again (all
protocols) ever more rarely while no gateway maps.
"""

from __future__ import annotations

from twisted.application.internet import backoffPolicy

from twisted_nat.portmap.values import Mapping

RENEWAL_RETRY = backoffPolicy(initialDelay=2.0, maxDelay=120.0, factor=2.0, jitter=lambda: 0.0)
"""Pauses between tries of a renewal the gateway did not answer."""

SEARCH_RETRY = backoffPolicy(initialDelay=60.0, maxDelay=3600.0, factor=2.0, jitter=lambda: 0.0)
"""Pauses between searches while no protocol gets a mapping."""


def retry_renewal(mapping: Mapping, now: float, failures: int) -> float | None:
    """
    When to try a renewal again after C{failures} in a row: the backoff,
    but halving towards the lease's end (no closer than a second); None
    once it has ended (the mapping is
    gone, and the mapper searches again).
    """
    expires = mapping.expires_at
    if expires is not None and now >= expires:
        return None
    wait = RENEWAL_RETRY(failures)
    if expires is not None:
        wait = min(wait, max(1.0, (expires - now) / 2))
    return now + wait


def search_again(now: float, searches: int) -> float:
    """When to search again after C{searches} searches in a row found nothing."""
    return now + SEARCH_RETRY(searches)
