"""
The numbers of C{twistd nat}'s options: parsed into values, or a
L{ConfigurationError} naming the option.
"""

from __future__ import annotations

import math

from twisted_nat.errors import ConfigurationError


def parse_count(option: str, text: str) -> int:
    """A number of sockets or probes: a whole number, 0 or more."""
    try:
        count = int(text, 10)
    except ValueError:
        raise ConfigurationError(f"--{option} must be a whole number, not {text!r}") from None
    if count < 0:
        raise ConfigurationError(f"--{option} cannot be negative (0 switches it off): {count}")
    return count


def parse_limit(rate_text: str, burst_text: str | None) -> tuple[float, float] | None:
    """C{--rate-limit} and C{--rate-burst}: (rate, burst), or None for no limit."""
    rate = _finite("rate-limit", rate_text, 0.0, "0 or more")
    if rate == 0:
        return None
    if burst_text is None:
        return rate, max(1.0, 2 * rate)
    return rate, _finite("rate-burst", burst_text, 1.0, "1 or more")


def parse_rate(option: str, text: str) -> float:
    """A rate: a finite number above 0."""
    return _finite(option, text, 0.0, "positive", strictly=True)


def _finite(option: str, text: str, least: float, bound: str, strictly: bool = False) -> float:
    """A finite number of at least C{least} (above it, if C{strictly}); C{bound} says which."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigurationError(f"--{option} must be a number, not {text!r}") from None
    within = value > least if strictly else value >= least
    if not (within and math.isfinite(value)):
        raise ConfigurationError(f"--{option} must be {bound} and finite: {text}")
    return value
