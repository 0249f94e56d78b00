"""
What one STUN request is while it waits for its answer: the retransmission
schedule of RFC 8489 section 6.2.1, the record the client keeps per
transaction, and the L{Response} it fires with.
"""

from __future__ import annotations

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from twisted_nat.address import Address
from twisted_nat.stun.attributes.address import (
    MappedAddress,
    OtherAddress,
    ResponseOrigin,
    XorMappedAddress,
)
from twisted_nat.stun.attributes.registry import AttributeTable
from twisted_nat.stun.message.value import Message


@attrs.frozen
class RetransmissionSchedule:
    """
    RFC 8489 section 6.2.1's timer values: the request is sent at 0, RTO,
    3 RTO, 7 RTO, ... (C{rc} sends in all), and the transaction fails C{rm}
    RTO after the last one.

    @ivar rto: the initial retransmission timeout, multiplied by C{backoff}
        after each send (RFC 8489 doubles it).
    @ivar rc: how many times the request is sent in all.
    @ivar rm: after the last send, wait C{rm} times the initial RTO.
    @ivar backoff: 2 for the RFC's schedule; 1 sends at an even pace, which
        behaviour discovery uses to fit retransmissions inside a short
        window derived from the measured round trip.
    """

    rto: float = 0.5
    rc: int = 7
    rm: float = 16
    backoff: float = 2.0

    def __attrs_post_init__(self) -> None:
        if self.rto <= 0 or self.rc < 1 or self.rm <= 0 or self.backoff < 1:
            raise ValueError("rto and rm must be positive, rc at least 1, backoff at least 1")

    @classmethod
    def within(cls, window: float, sends: int = 7) -> RetransmissionSchedule:
        """C{sends} evenly spaced transmissions, failing C{window} seconds after the first."""
        step = window / (sends + 1)
        return cls(rto=step, rc=sends, rm=2, backoff=1.0)

    def delay_after(self, sends: int) -> float:
        """How long to wait after the C{sends}-th transmission (1-based)."""
        if sends < self.rc:
            return float(self.rto * self.backoff ** (sends - 1))
        return self.rto * self.rm

    @property
    def total(self) -> float:
        """Time from the first send until the transaction fails (39.5 s by default)."""
        return sum(self.delay_after(n) for n in range(1, self.rc + 1))


@attrs.frozen
class Response:
    """A STUN response with where it came from and how long it took."""

    message: Message
    source: Address
    server: Address
    attempts: int
    elapsed: float
    rtt: float = attrs.field(default=0.0)
    """
    Time since the latest transmission: the round trip if that transmission
    is the one answered (Karn's ambiguity applies after retransmissions).
    """

    @property
    def mapped_address(self) -> Address | None:
        """XOR-MAPPED-ADDRESS, or MAPPED-ADDRESS from a server that has no XOR."""
        xor = self.message.get(XorMappedAddress)
        if xor is not None:
            return xor.address
        plain = self.message.get(MappedAddress)
        return plain.address if plain is not None else None

    @property
    def other_address(self) -> Address | None:
        other = self.message.get(OtherAddress)
        return other.address if other is not None else None

    @property
    def response_origin(self) -> Address | None:
        origin = self.message.get(ResponseOrigin)
        return origin.address if origin is not None else None


class Transaction:
    """
    One request in flight: its bytes and destination, its schedule and
    progress, the key and attribute table its answer is checked and decoded
    with, and the Deferred that answer fires.
    """

    __slots__ = (
        "attempts",
        "data",
        "deferred",
        "destination",
        "key",
        "last_sent",
        "match_source",
        "schedule",
        "started",
        "table",
        "timer",
    )

    def __init__(
        self,
        data: bytes,
        destination: Address,
        schedule: RetransmissionSchedule,
        key: bytes | None,
        match_source: bool,
        started: float,
        table: AttributeTable,
    ) -> None:
        self.data = data
        self.destination = destination
        self.schedule = schedule
        self.key = key
        self.match_source = match_source
        self.started = started
        self.table = table
        self.last_sent = started
        self.attempts = 0
        self.timer: IDelayedCall | None = None
        self.deferred: Deferred[Response] = Deferred()
