"""
Birthday-paradox punching: a direct path between a NAT that gives every
destination a fresh, random public port (the I{hard} side: symmetric,
random allocation) and a NAT that maps endpoint-independently but admits
only the endpoints it has sent to (the I{easy} side: a port-restricted
cone).

No candidate can describe the hard side, so both sides guess and let one
guess meet another: the hard side opens C{N} extra sockets and punches the
easy side's server-reflexive candidate from each (L{SPRAY_PUNCHES} apiece),
and the easy side sends PUNCHes to C{n} distinct random ports of the hard
side's public address, paced (L{Prober}).  A probe that lands on one of the
C{N} mappings is admitted and answered on its socket, and from then on it
is an ordinary punch under the session's key.  Both sides start at once:
a probe that reaches a port before the hard side has opened its mapping
there is dropped by the hard NAT, but it has opened the easy NAT for that
port, so the hard side's PUNCH from a mapping there comes in.  The chance
that at least one of C{n} probes lands among C{N} of C{R} ports is about
C{1 - exp(-n N / R)} (L{success_probability}); docs/architecture.md states
the budget of the defaults.  Who plays which part is decided by
L{twisted_nat.punch.plan}.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from twisted_nat.address import Address
from twisted_nat.errors import ConfigurationError

DEFAULT_SOCKETS = 256
"""Extra sockets the hard side opens for one punch (N)."""

DEFAULT_PROBES = 2048
"""PUNCHes the easy side sends at most for one punch (n)."""

DEFAULT_RATE = 1000.0
"""Probes a second: about 1.1 Mbit/s of PUNCHes, for two seconds at most."""

PORT_RANGE = range(1024, 65536)
"""
The ports probed: where Linux (C{masquerade random}, C{fully-random}) and
most routers allocate.  A NAT with a smaller pool inside it is hit as
often: fewer probes land in its pool, but each is likelier to hit.
"""

SPRAY_PUNCHES = 2
"""
PUNCHes each extra socket sends before it hears from the peer: one opens
the mapping; the second covers a loss on the way to the NAT.  A socket that
hears from the peer is punched from as any other pair.
"""

PROBE_TICK = 0.02
"""Probes leave in bursts this far apart (20 of them at the default rate)."""


def success_probability(
    sockets: int, probes: int, ports: int = len(PORT_RANGE), loss: float = 0.0
) -> float:
    """
    The chance that at least one of C{probes} distinct ports out of
    C{ports} is one of C{sockets} mappings, when each probe is lost with
    probability C{loss}.
    """
    if sockets <= 0 or probes <= 0:
        return 0.0
    reachable = sockets * (1.0 - loss)
    miss = 1.0
    for k in range(min(probes, ports)):
        miss *= max(0.0, 1.0 - reachable / (ports - k))
    return 1.0 - miss


class Prober:
    """
    The easy side's probes for one punch: which ports, and when.  No I/O:
    L{due} says where to send now, L{next_at} when to ask again.

    The ports are a random sample, without repeats, of C{ports}; with a
    seeded C{rng} the same run after run.  Bursts are paced from the last
    one, not caught up: a reactor that fell behind sends later, never more
    at once.

    @ivar sent: probes handed out so far.
    """

    __slots__ = ("_next", "_ports", "budget", "host", "per_burst", "sent", "tick")

    def __init__(
        self,
        host: str,
        budget: int,
        rate: float,
        start: float,
        rng: random.Random,
        ports: range = PORT_RANGE,
    ) -> None:
        if budget < 0:
            raise ConfigurationError(f"a probe budget cannot be negative ({budget})")
        if not rate > 0:
            raise ConfigurationError(f"a probe rate must be positive ({rate})")
        self.host = host
        self.tick = max(PROBE_TICK, 1.0 / rate)
        self.per_burst = max(1, round(rate * self.tick))
        self.budget = min(budget, len(ports))
        self._ports: Sequence[int] = rng.sample(ports, self.budget)
        self._next = start
        self.sent = 0

    @property
    def next_at(self) -> float | None:
        """When the next burst is due; None once the budget is spent."""
        return self._next if self.sent < self.budget else None

    def due(self, now: float) -> list[Address]:
        """The probes to send at C{now}: a burst, if one is due."""
        if self.sent >= self.budget or now < self._next - 1e-9:
            return []
        burst = self._ports[self.sent : self.sent + self.per_burst]
        self.sent += len(burst)
        self._next = max(now, self._next) + self.tick
        return [(self.host, port) for port in burst]
