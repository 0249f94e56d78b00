"""
What one TURN allocation holds, without I/O: its state, the lifetime the
server granted, the peer hosts it has permissions for and its channels.

The L{Allocation} does the requests and keeps the timers; this object
records what their answers established and decides what follows from it
(when to refresh, which channel number is free, how data to a peer goes).
"""

from __future__ import annotations

import enum
import functools
import ipaddress
from collections.abc import Iterable

from twisted_nat.address import Address
from twisted_nat.errors import (
    ConfigurationError,
    TURNAllocationClosed,
    TURNError,
    TURNNoPermission,
    TURNUnavailable,
)
from twisted_nat.turn.channel import CHANNEL_NUMBERS


class AllocationState(enum.Enum):
    """Where an allocation is in its life."""

    ACTIVE = "active"
    """Usable: refreshed by its timers, relaying both ways."""
    CLOSING = "closing"
    """L{Allocation.close} sent the deallocation and waits for its answer."""
    ENDED = "ended"
    """Closed or lost; L{Allocation.lost} has fired."""


@functools.lru_cache(maxsize=1024)
def normal_host(host: str) -> str:
    """
    The canonical spelling of an IP literal, so that permissions and peers
    decoded from XOR-PEER-ADDRESS compare equal.  Cached: every relayed
    datagram asks, nearly always about the same few peers.

    @raise ConfigurationError: C{host} is not an IP address (TURN peers are
        addresses; resolve names first).
    """
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        raise ConfigurationError(f"TURN peer {host!r} is not an IP address") from None


def normal_peer(peer: Address) -> Address:
    """C{peer} with its host spelled canonically (L{normal_host})."""
    return (normal_host(peer[0]), peer[1])


def is_fatal(error: BaseException) -> bool:
    """Whether C{error} from a refresh of any kind means the allocation is gone."""
    return isinstance(error, TURNUnavailable) or (
        isinstance(error, TURNError) and error.code == 437
    )


class AllocationBook:
    """
    The record of one allocation on C{server}.

    @ivar state: an L{AllocationState}.
    @ivar lifetime: the lifetime the server granted last, in seconds.
    @ivar expires_at: when the allocation ends unless refreshed, in the
        reactor's seconds.
    @ivar permitted: the peer hosts the server holds a permission for.
    @ivar channels: the bound channel numbers, by peer.
    @ivar peers: the peers, by bound channel number.
    @ivar retired: channel numbers whose binding lapsed; RFC 8656 12
        forbids giving them to another peer for 5 minutes, and 4096
        numbers are plenty never to.
    """

    def __init__(self, server: Address) -> None:
        self.server = server
        self.state = AllocationState.ACTIVE
        self.lifetime = 0
        self.expires_at = 0.0
        self.permitted: set[str] = set()
        self.channels: dict[Address, int] = {}
        self.peers: dict[int, Address] = {}
        self.retired: set[int] = set()

    @property
    def active(self) -> bool:
        return self.state is AllocationState.ACTIVE

    def check_active(self) -> None:
        """@raise TURNAllocationClosed: the allocation is closing or ended."""
        if self.state is not AllocationState.ACTIVE:
            raise TURNAllocationClosed(server=self.server)

    def close(self) -> bool:
        """Start closing; whether the allocation was active (else nothing changes)."""
        if self.state is not AllocationState.ACTIVE:
            return False
        self.state = AllocationState.CLOSING
        return True

    def end(self) -> bool:
        """End, whether active or closing; whether it had not ended already."""
        if self.state is AllocationState.ENDED:
            return False
        self.state = AllocationState.ENDED
        return True

    def grant(self, lifetime: int, now: float, refresh_fraction: float) -> float:
        """
        The server granted C{lifetime} seconds at C{now}.

        @return: the delay until the next refresh.
        """
        self.lifetime = lifetime
        self.expires_at = now + lifetime
        return max(lifetime * refresh_fraction, 0.0)

    def free_channel(self, in_flight: Iterable[int]) -> int | None:
        """
        The lowest channel number neither bound, being bound (C{in_flight})
        nor retired; None when all are taken.
        """
        taken = set(self.peers) | self.retired
        taken.update(in_flight)
        for number in CHANNEL_NUMBERS:
            if number not in taken:
                return number
        return None

    def bind(self, peer: Address, number: int) -> None:
        """Channel C{number} is bound to C{peer}."""
        self.channels[peer] = number
        self.peers[number] = peer

    def retire(self, peer: Address, number: int) -> None:
        """The binding of C{number} to C{peer} lapsed: the number rests."""
        self.channels.pop(peer, None)
        self.peers.pop(number, None)
        self.retired.add(number)

    def route(self, peer: Address) -> tuple[Address, int | None]:
        """
        How data to C{peer} goes: the peer (spelled as its channel or
        permission knows it) and its channel number, or None for a Send
        indication.

        @raise ConfigurationError: C{peer} is not an IP address.
        @raise TURNNoPermission: no channel and no permission for C{peer}'s
            host: the server would drop the data without a word.
        """
        number = self.channels.get(peer)
        if number is not None:
            return peer, number
        peer = normal_peer(peer)
        number = self.channels.get(peer)
        if number is None and peer[0] not in self.permitted:
            raise TURNNoPermission(peer, self.server)
        return peer, number
