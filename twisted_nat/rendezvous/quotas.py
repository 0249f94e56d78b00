"""
What the rendezvous server lets strangers hold: connections (in all, and
per source address), offers waiting for an answer (per connection, and in
all), and how fast one source may register names.

Pure decisions, tested without a clock or a socket; the server
(L{twisted_nat.rendezvous.server}) asks them and acts.  The defaults and
why are in docs/security.md.
"""

from __future__ import annotations

import ipaddress
import resource
from collections import Counter
from collections.abc import Hashable
from typing import Any

import attrs
from twisted.internet.interfaces import IAddress

from twisted_nat.limits import DESCRIPTOR_RESERVE

IPV6_SOURCE_PREFIX = 64
"""An IPv6 source is its /64: one host may hold a whole /64 of addresses."""


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be more than 0, not {value!r}")


@attrs.frozen
class ServerLimits:
    """
    The rendezvous server's limits.

    @ivar max_connections: connections at once, in all; never more than the
        descriptor limit allows (L{connection_ceiling}).
    @ivar max_per_source: connections at once from one source (an IPv4
        address, or an IPv6 /64).
    @ivar register_rate: registrations and releases a second from one
        source, on average, after a burst of C{register_burst}.
    @ivar register_burst: registrations and releases from one source at once.
    @ivar max_sources: sources whose registration rate is remembered; when
        all are busy, a new source cannot register until one has rested.
    @ivar idle_timeout: seconds a connection may stay without registering
        a name before it is closed.
    @ivar max_pending_per_connection: offers waiting for an answer that one
        connection may have sent, and (separately) that may wait for one
        connection to answer.
    @ivar max_pending: offers waiting for an answer, in all.
    """

    max_connections: int = attrs.field(default=10_000, validator=_positive)
    max_per_source: int = attrs.field(default=64, validator=_positive)
    register_rate: float = attrs.field(default=1.0, validator=_positive)
    register_burst: int = attrs.field(default=20, validator=_positive)
    max_sources: int = attrs.field(default=16_384, validator=_positive)
    idle_timeout: float = attrs.field(default=30.0, validator=_positive)
    max_pending_per_connection: int = attrs.field(default=16, validator=_positive)
    max_pending: int = attrs.field(default=1_024, validator=_positive)


def connection_ceiling(reserve: int = DESCRIPTOR_RESERVE) -> int:
    """
    The most peer connections the process's descriptor limit (the soft
    C{RLIMIT_NOFILE}) leaves room for, keeping C{reserve} free: past it,
    C{accept} would fail for everything, the registry's files included.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 2**31
    return max(1, soft - reserve)


def source_of(address: IAddress) -> str | None:
    """
    Whom a connection counts against: its IPv4 address or its IPv6 /64; None
    for an address that is not an IP one (a UNIX socket), which is not
    limited per source.
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return None
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_SOURCE_PREFIX), strict=False))
    return str(ip)


class Admission:
    """
    The connections held, in all and per source: whether one more may stay.
    """

    def __init__(self, max_connections: int, max_per_source: int) -> None:
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.total = 0
        self._per_source: Counter[str] = Counter()

    def admit(self, source: str | None) -> str | None:
        """Take a place for a connection from C{source}; None if taken, else why not."""
        if self.total >= self.max_connections:
            return f"the server holds its most connections ({self.max_connections})"
        if source is not None:
            if self._per_source[source] >= self.max_per_source:
                return f"{source} holds its most connections ({self.max_per_source})"
            self._per_source[source] += 1
        self.total += 1
        return None

    def leave(self, source: str | None) -> None:
        """Give back the place an admitted connection from C{source} took."""
        self.total -= 1
        if source is not None:
            self._per_source[source] -= 1
            if self._per_source[source] <= 0:
                del self._per_source[source]

    def held_by(self, source: str) -> int:
        return self._per_source[source]


class PendingOffers:
    """
    The offers relayed and not yet answered: per sender, per recipient and
    in all, each side capped, so that neither a flood of offers nor a peer
    that never answers can grow what the server holds.
    """

    def __init__(self, max_per_connection: int, max_total: int) -> None:
        self.max_per_connection = max_per_connection
        self.max_total = max_total
        self.total = 0
        self._sent: Counter[Hashable] = Counter()
        self._waiting: Counter[Hashable] = Counter()

    def reserve(self, sender: Hashable, recipient: Hashable) -> str | None:
        """Take a place for an offer; None if taken, else why not."""
        if self.total >= self.max_total:
            return f"the server has its most offers waiting for answers ({self.max_total})"
        if self._sent[sender] >= self.max_per_connection:
            return f"you have {self.max_per_connection} offers waiting for answers"
        if self._waiting[recipient] >= self.max_per_connection:
            return f"the peer has {self.max_per_connection} offers waiting for its answers"
        self._sent[sender] += 1
        self._waiting[recipient] += 1
        self.total += 1
        return None

    def release(self, sender: Hashable, recipient: Hashable) -> None:
        """An offer reserved for is answered, failed or expired."""
        self.total -= 1
        for counts, key in ((self._sent, sender), (self._waiting, recipient)):
            counts[key] -= 1
            if counts[key] <= 0:
                del counts[key]

    def sent_by(self, sender: Hashable) -> int:
        return self._sent[sender]

    def waiting_for(self, recipient: Hashable) -> int:
        return self._waiting[recipient]
