"""
Birthday-paradox punching: a direct path between a NAT that gives every
destination a fresh, random public port (the I{hard} side: symmetric,
random allocation) and a NAT that maps endpoint-independently but admits
only the endpoints it has sent to (the I{easy} side: a port-restricted
cone).

No candidate can describe the hard side: the port its NAT opens towards
the easy side is chosen when its first PUNCH leaves, at random, and the
easy side's filter drops that PUNCH, since nothing was ever sent there.
Port prediction (L{twisted_nat.service}) needs sequential allocation.  So
both sides make many guesses and let one of them meet one of the others:

  - the hard side opens C{N} extra UDP sockets and punches the easy side's
    server-reflexive candidate from each (L{SPRAY_PUNCHES} PUNCHes apiece):
    C{N} mappings towards exactly that endpoint, on C{N} random ports;
  - the easy side sends PUNCHes from its shared socket to C{n} distinct
    random ports of the hard side's public address, C{rate} a second, in
    bursts (L{Prober}).

A probe that lands on one of the C{N} ports is admitted (that mapping has
sent to exactly the probe's source) and answered on its socket; the
answer, and the hard side's PUNCH back from that socket, pass the easy
side's filter, since it has just sent there; from then on it is an
ordinary punch, under the session's key.  Probing stops at the first
answer, the unused sockets close when the punch ends, and the chosen one
closes with its connection.

Who plays which part follows from the L{NATHint} each peer put in its
offer or answer (L{role}): the same two hints give the two peers opposite
parts, or none to both, so neither guesses alone.  A peer whose sockets or
probes are switched off (0) says so in its hint, and the other spares its
own part.  The probes are ordinary PUNCHes, authenticated as any other.

The budget.  With C{R} ports in the hard NAT's pool, distinct probes, and
a loss of C{p} one way, the chance that at least one probe lands is::

    P = 1 - C(R - N', n) / C(R, n)  ~  1 - (1 - N'/R)^n  ~  1 - exp(-n N'/R),
    N' = N (1 - p)

(the handshake after a hit retransmits, so loss costs only lost probes).
With the defaults, C{N} = 256 sockets, C{n} = 2048 probes at 1000 a
second, and Linux's pool of C{R} = 64,512 ports (1024-65535):

    P = 99.97 % without loss, 99.94 % at 10 % loss;
    the first hit after R / (N + 1) = 251 probes on average, a quarter
    of a second; all n probes take 2.05 s (plus L{ANSWER_DELAY} when the
    easy side answers rather than offers);
    the easy side sends at most 2048 PUNCHes of 112 bytes (140 with IPv4
    and UDP headers): 287 kB, about 1.1 Mbit/s while it lasts;
    the hard side sends 2 x 256 = 512 PUNCHes (72 kB) and holds 256 more
    sockets (file descriptors) for at most the punch's timeout.

Halving either C{N} or C{n} gives about 98 % (C{n N / R} = 4 expected
hits instead of 8); C{N} = 64 about 87 %.  L{success_probability} computes
it for other settings.  Two hard sides cannot meet this way (each probe
of one would need to hit a mapping that exists only towards the probe's
own, unknown, source port), so they stay relayed.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from twisted_nat.errors import ConfigurationError
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.nat import FilteringBehavior
from twisted_nat.rendezvous.values import NATHint

if TYPE_CHECKING:
    from twisted_nat.connection import AppDataRouter
    from twisted_nat.punch import HolePuncher

Address = tuple[str, int]

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

ANSWER_DELAY = 0.25
"""
How long an easy side that answered waits before probing: the hard side
opens its sockets only when our answer reaches it, through the rendezvous,
and a probe that arrives before its mapping exists is wasted.  An easy
side that offered starts at once: the hard side answered, and opened its
sockets, before we heard the answer.
"""


class Role(enum.Enum):
    """Our part in a birthday punch."""

    HARD = "hard"
    """Open extra sockets and punch the peer from each."""
    EASY = "easy"
    """Probe random ports of the peer's public address."""


_NEEDS_PROBES = frozenset({FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT, FilteringBehavior.UNKNOWN})
"""
Easy-side filtering that the birthday method is for.  One that admits any
port of an address it has sent to (or anyone) already lets the hard side's
PUNCHes in once it punched the hard side's server-reflexive candidate, and
the peer-reflexive candidate they bring does the rest.
"""


def role(ours: NATHint | None, theirs: NATHint | None) -> Role | None:
    """
    Our part, from the hints both peers sent in the offer and answer: the
    same two hints give the two peers opposite parts, or none to both.
    """
    if ours is None or theirs is None or not (ours.birthday and theirs.birthday):
        return None
    if ours.unpredictable and theirs.endpoint_independent and theirs.filtering in _NEEDS_PROBES:
        return Role.HARD
    if theirs.unpredictable and ours.endpoint_independent and ours.filtering in _NEEDS_PROBES:
        return Role.EASY
    return None


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


class ExtraSockets:
    """
    The extra sockets of the birthday method's hard side, or of a meeting
    run (L{twisted_nat.meeting}), each a non-relayed base of the puncher
    and the router.  They are opened for one punch (L{open}); when it ends
    (L{settle}) all but the one its path uses are closed; that one is kept
    until no connection uses it any more (L{prune}).
    """

    log = Logger()

    def __init__(
        self, reactor: Any, puncher: HolePuncher, router: AppDataRouter, interface: str
    ) -> None:
        self._reactor = reactor
        self._puncher = puncher
        self._router = router
        self._interface = interface
        self._ports: dict[str, Any] = {}
        self._punching: dict[bytes, list[str]] = {}
        self._kept: set[str] = set()

    @property
    def names(self) -> list[str]:
        """The bases open now, punching or kept."""
        return list(self._ports)

    @property
    def kept(self) -> frozenset[str]:
        """The bases kept for the connections whose path uses them."""
        return frozenset(self._kept)

    def open(self, punch_id: bytes, count: int, method: str = "birthday") -> list[str]:
        """
        Up to C{count} sockets for the punch C{punch_id}, named by their
        port.  Running out of ports or file descriptors costs the method
        some of its chance, not the punch: the sockets opened are used.
        """
        names: list[str] = []
        for _ in range(count):
            mux = UDPMultiplexer()
            try:
                port = self._reactor.listenUDP(0, mux, interface=self._interface)
            except (CannotListenError, OSError) as e:
                self.log.warn(
                    "opened only {opened} of {count} {method} sockets: {error}",
                    opened=len(names),
                    count=count,
                    method=method,
                    error=e,
                )
                break
            name = f"{method} {port.getHost().port}"
            self._puncher.add_base(name, mux, relayed=False)
            self._router.add_base(name, mux)
            self._ports[name] = port
            names.append(name)
        self._punching[punch_id] = names
        return names

    def settle(self, punch_id: bytes, chosen: str | None) -> None:
        """The punch ended on the base C{chosen}: close the other sockets it had."""
        for name in self._punching.pop(punch_id, ()):
            if name == chosen:
                self._kept.add(name)
            else:
                self._close(name)

    def prune(self, in_use: Collection[str | None]) -> None:
        """Close the kept sockets that no connection's path uses any more."""
        for name in [name for name in self._kept if name not in in_use]:
            self._kept.discard(name)
            self._close(name)

    def close_all(self) -> None:
        for name in list(self._ports):
            self._close(name)
        self._punching.clear()
        self._kept.clear()

    def _close(self, name: str) -> None:
        port = self._ports.pop(name, None)
        self._puncher.remove_base(name)
        self._router.remove_base(name)
        if port is not None:
            port.stopListening()
