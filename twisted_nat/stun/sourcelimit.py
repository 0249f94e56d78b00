"""
The STUN server's per-source rate limit.

Anyone can send a STUN server a request with a forged source address, and
the answer, a few times larger than the request, goes to that address: a
STUN server is a reflector.  Limiting the requests answered per source IP
bounds what the server will send any one address, however many requests
arrive in its name.  The sockets of an RFC 5780 group share one limit, so
four sockets do not mean four times the rate.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from twisted_nat.limits import DropLog, KeyedBuckets

DEFAULT_RATE = 100.0
DEFAULT_BURST = 200.0
MAX_SOURCES = 65536
"""Source addresses remembered at once; a bucket is forgotten once it has refilled."""


class SourceLimit:
    """
    At most C{rate} datagrams a second from each source IP, after a burst
    of C{burst}; what is over the limit is dropped, counted by reason in
    L{drops} and logged at a bounded rate.  Once C{max_sources} addresses
    are being limited at the same time, datagrams from further addresses
    are dropped too (reason C{"sources"}), so a flood from forged
    addresses cannot grow memory.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        rate: float = DEFAULT_RATE,
        burst: float = DEFAULT_BURST,
        max_sources: int = MAX_SOURCES,
    ) -> None:
        self.clock = clock
        self.rate = rate
        self.buckets: KeyedBuckets[str] = KeyedBuckets(rate, burst, max_sources)
        self.drops = DropLog(self.log, clock)

    def allow(self, host: str) -> bool:
        """Whether a datagram from C{host} may be handled now; if not, count and maybe log it."""
        if self.buckets.take(host, self.clock.seconds()):
            return True
        if host in self.buckets:
            self.drops.drop(
                "rate",
                "dropped STUN requests from {host}: over {rate}/s",
                host=host,
                rate=self.rate,
            )
        else:
            self.drops.drop(
                "sources",
                "dropped STUN requests from {host}: {count} sources limited already",
                host=host,
                count=len(self.buckets),
            )
        return False
