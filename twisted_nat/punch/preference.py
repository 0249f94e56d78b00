"""
Which address family a connection's path uses when both work, as libp2p
and Tailscale race them: IPv6 and IPv4 pairs are punched together, and
IPv6 is taken when its round trip is within about 10 % of IPv4's (it
usually crosses no NAT, so its path needs no keep-alive to stay open and
survives a NAT's restart).  A path in use keeps its family until the other
is clearly better (hysteresis), so that jitter around the threshold does
not move a connection to and fro.  Pure: round trips in, a family out.
"""

from __future__ import annotations

import attrs

from twisted_nat.errors import ConfigurationError
from twisted_nat.limits import positive


def _fraction(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigurationError(f"{attribute.name} must be at least 0 and below 1 ({value})")


def _not_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise ConfigurationError(f"{attribute.name} must not be negative ({value})")


@attrs.frozen
class FamilyPreference:
    """
    @ivar margin: IPv6 is preferred while its RTT is at most this much
        (a fraction) above IPv4's.
    @ivar hysteresis: a path in use moves only past the margin by this much
        more: IPv6 to IPv4 when IPv6 is over C{margin + hysteresis} slower,
        IPv4 to IPv6 when IPv6 is within C{margin - hysteresis}.
    @ivar slack: seconds IPv6 may be slower at least, however short
        IPv4's RTT (scaled with the hysteresis as the margin is): on a
        LAN, RTTs of a fraction of a millisecond differ by more than 10 %
        by chance alone.
    @ivar wait: how long the controlling peer waits for an IPv6 pair to
        work once an IPv4 pair has (Happy Eyeballs' 250 ms): a blocked
        IPv6 costs at most this before IPv4 is taken.
    """

    margin: float = attrs.field(default=0.10, validator=_fraction)
    hysteresis: float = attrs.field(default=0.05, validator=_fraction)
    slack: float = attrs.field(default=0.001, validator=_not_negative)
    wait: float = attrs.field(default=0.25, validator=positive)

    def __attrs_post_init__(self) -> None:
        if self.hysteresis > self.margin:
            raise ConfigurationError("the hysteresis must not exceed the margin")

    def prefers_ipv6(self, rtt6: float, rtt4: float, current: int | None = None) -> bool:
        """
        Whether a path of RTT C{rtt6} beats one of C{rtt4}, for a
        connection on C{current} (4, 6, or None before it has a path).
        """
        allowed = self.margin
        if current == 6:
            allowed += self.hysteresis
        elif current == 4:
            allowed -= self.hysteresis
        slack = self.slack * allowed / self.margin if self.margin else self.slack
        return rtt6 <= rtt4 + max(rtt4 * allowed, slack)

    def choose(self, rtt6: float | None, rtt4: float | None, current: int | None = None) -> int:
        """
        The family to use given the RTT of each family's best working
        path (None: none works, or not measured; IPv6 is given the benefit
        when neither is measured).
        """
        if rtt6 is None and rtt4 is None:
            return 6 if current is None else current
        if rtt4 is None:
            return 6
        if rtt6 is None:
            return 4
        return 6 if self.prefers_ipv6(rtt6, rtt4, current) else 4


DEFAULT_PREFERENCE = FamilyPreference()
