"""
A stateful firewall for a simulated host's global IPv6 addresses: what a
home router does for IPv6, where there is no NAT.  It lets in what belongs
to a flow the host started (the remote address and port it sent to, from
the local address and port it sent from), as Linux's conntrack does for
``ct state established``, and drops the rest; a flow not used for
C{timeout} seconds is forgotten.
"""

from __future__ import annotations

import attrs

from twisted_nat.address import Address


@attrs.define
class FirewallStats:
    """@ivar dropped: inbound datagrams that belonged to no flow."""

    dropped: int = 0
    admitted: int = 0


class Firewall:
    """
    @param timeout: seconds a flow stays open after its last datagram
        (30, as conntrack's for UDP).
    """

    def __init__(self, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.stats = FirewallStats()
        self._flows: dict[tuple[Address, Address], float] = {}

    def outbound(self, local: Address, remote: Address, now: float) -> None:
        """The host sent from C{local} to C{remote}: that flow is open until the timeout."""
        self._flows[(local, remote)] = now + self.timeout

    def admits(self, local: Address, remote: Address, now: float) -> bool:
        """Whether a datagram from C{remote} to C{local} gets in (refreshing its flow)."""
        expires = self._flows.get((local, remote))
        if expires is None or expires < now:
            self._flows.pop((local, remote), None)
            self.stats.dropped += 1
            return False
        self._flows[(local, remote)] = now + self.timeout
        self.stats.admitted += 1
        return True
