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
    try:
        rate = float(rate_text)
    except ValueError:
        raise ConfigurationError(f"--rate-limit must be a number, not {rate_text!r}") from None
    if not (rate >= 0 and math.isfinite(rate)):
        raise ConfigurationError(f"--rate-limit must be 0 or more and finite: {rate_text}")
    if rate == 0:
        return None
    if burst_text is None:
        return rate, max(1.0, 2 * rate)
    try:
        burst = float(burst_text)
    except ValueError:
        raise ConfigurationError(f"--rate-burst must be a number, not {burst_text!r}") from None
    if not (burst >= 1 and math.isfinite(burst)):
        raise ConfigurationError(f"--rate-burst must be 1 or more and finite: {burst_text}")
    return rate, burst


def parse_rate(option: str, text: str) -> float:
    """A rate: a finite number above 0."""
    try:
        rate = float(text)
    except ValueError:
        raise ConfigurationError(f"--{option} must be a number, not {text!r}") from None
    if not (rate > 0 and math.isfinite(rate)):
        raise ConfigurationError(f"--{option} must be positive and finite: {text}")
    return rate
