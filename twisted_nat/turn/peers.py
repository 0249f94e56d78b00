"""
The permissions and channels of one TURN allocation: the CreatePermission
and ChannelBind requests, and the timers that refresh them before they
lapse (permissions every 4 of their 5 minutes, channel bindings every 9 of
their 10).  What the answers established goes into the allocation's
L{AllocationBook}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.address import Address, format_address
from twisted_nat.errors import ConfigurationError, TURNAllocationClosed, TURNError
from twisted_nat.stun.attributes import Attribute
from twisted_nat.stun.client import Response
from twisted_nat.stun.message import Method
from twisted_nat.turn.attributes import ChannelNumber, XorPeerAddress
from twisted_nat.turn.bookkeeping import AllocationBook, is_fatal, normal_host, normal_peer
from twisted_nat.turn.stats import TURNStats

PERMISSION_LIFETIME = 300.0
"""RFC 8656 9: a permission lasts 5 minutes unless refreshed."""
PERMISSION_REFRESH = 240.0
"""Refresh a permission a minute before it would expire."""
CHANNEL_LIFETIME = 600.0
"""RFC 8656 12: a channel binding lasts 10 minutes unless refreshed."""
CHANNEL_REFRESH = 540.0
"""Refresh a channel binding a minute before it would expire."""

Request = Callable[[int, Sequence[Attribute]], Deferred[Response]]
"""Sends a signed request on the allocation: the method and its attributes."""


def cancel_timer(timer: IDelayedCall | None) -> None:
    """Cancel C{timer} unless it is None, fired or cancelled already."""
    if timer is not None and timer.active():
        timer.cancel()


class PeerAccess:
    """
    Which peers may use one allocation, and over which channels.

    @param book: the allocation's record.
    @param reactor: the clock of the refresh timers.
    @param stats: the client's counters.
    @param request: sends the allocation's signed requests.
    @param lose: called with the error of a refresh that shows the
        allocation is gone.
    @param relayed: the allocation's relayed address, for the log.
    """

    log = Logger()

    def __init__(
        self,
        book: AllocationBook,
        reactor: IReactorTime,
        stats: TURNStats,
        request: Request,
        lose: Callable[[TURNError], None],
        relayed: Address,
    ) -> None:
        self._book = book
        self._reactor = reactor
        self._stats = stats
        self._request = request
        self._lose = lose
        self._relayed = relayed
        self._permission_timers: dict[str, IDelayedCall] = {}
        self._channel_timers: dict[Address, IDelayedCall] = {}
        self._binding: dict[Address, tuple[int, list[Deferred[int]]]] = {}

    def cancel(self) -> None:
        """Stop every refresh timer and forget the permissions: the allocation ends."""
        for timer in [*self._permission_timers.values(), *self._channel_timers.values()]:
            cancel_timer(timer)
        self._permission_timers.clear()
        self._channel_timers.clear()
        self._book.permitted.clear()

    # --- permissions ---

    def create_permission(self, *hosts: str) -> Deferred[None]:
        """See L{Allocation.create_permission<twisted_nat.turn.Allocation.create_permission>}."""
        try:
            self._book.check_active()
            wanted = [normal_host(host) for host in hosts]
        except (TURNError, ConfigurationError) as e:
            return defer.fail(e)
        if not wanted:
            return defer.fail(ValueError("create_permission needs at least one peer host"))
        return Deferred.fromCoroutine(self._create_permission(wanted))

    async def _create_permission(self, hosts: list[str]) -> None:
        await self._request(Method.CREATE_PERMISSION, [XorPeerAddress(host, 0) for host in hosts])
        self._stats.permissions += 1
        for host in hosts:
            self._permitted(host)

    def _permitted(self, host: str) -> None:
        """The server holds a permission for C{host} from now on: plan its refresh."""
        if not self._book.active:
            return
        self._book.permitted.add(host)
        cancel_timer(self._permission_timers.get(host))
        self._permission_timers[host] = self._reactor.callLater(
            PERMISSION_REFRESH, self._refresh_permission, host
        )

    def _refresh_permission(self, host: str) -> None:
        self._permission_timers.pop(host, None)

        def refused(failure: Failure) -> None:
            self._book.permitted.discard(host)
            self._refresh_failed(failure, f"permission for {host}")

        self.create_permission(host).addErrback(refused)

    def _refresh_failed(self, failure: Failure, what: str) -> None:
        """
        A permission or channel could not be refreshed: without an answer
        (or with 437) the allocation is gone; any other refusal loses only
        that permission or channel, which the next send will show.
        """
        error = failure.value
        if isinstance(error, TURNError) and is_fatal(error):
            self._lose(error)
            return
        if isinstance(error, TURNAllocationClosed) or not self._book.active:
            return
        self.log.warn(
            "TURN {what} on {relayed} not refreshed: {error}",
            what=what,
            relayed=format_address(self._relayed),
            error=error,
        )

    # --- channels ---

    def bind_channel(self, peer: Address) -> Deferred[int]:
        """See L{Allocation.bind_channel<twisted_nat.turn.Allocation.bind_channel>}."""
        try:
            self._book.check_active()
            peer = normal_peer(peer)
        except (TURNError, ConfigurationError) as e:
            return defer.fail(e)
        if peer in self._book.channels:
            return defer.succeed(self._book.channels[peer])
        waiter: Deferred[int] = Deferred()
        if peer in self._binding:  # one ChannelBind in flight serves every caller
            self._binding[peer][1].append(waiter)
            return waiter
        number = self._book.free_channel(number for number, _ in self._binding.values())
        if number is None:
            return defer.fail(TURNError(None, "no channel number left", self._book.server))
        self._binding[peer] = (number, [waiter])
        d = self._request(Method.CHANNEL_BIND, [ChannelNumber(number), XorPeerAddress(*peer)])
        d.addBoth(self._bound, peer, number)
        return waiter

    def _bound(self, result: Response | Failure, peer: Address, number: int) -> None:
        """A ChannelBind was answered: install the channel and tell every waiter."""
        _, waiters = self._binding.pop(peer, (number, []))
        if not isinstance(result, Failure):
            self._stats.channel_binds += 1
            if self._book.active:
                self._book.bind(peer, number)
                self._permitted(peer[0])
                cancel_timer(self._channel_timers.get(peer))
                self._channel_timers[peer] = self._reactor.callLater(
                    CHANNEL_REFRESH, self._refresh_channel, peer
                )
        for waiter in waiters:
            if waiter.called:  # cancelled by its caller
                continue
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(number)

    def _refresh_channel(self, peer: Address) -> None:
        self._channel_timers.pop(peer, None)
        number = self._book.channels.get(peer)
        if number is None or not self._book.active:
            return
        d = self._request(Method.CHANNEL_BIND, [ChannelNumber(number), XorPeerAddress(*peer)])

        def rebound(response: Response) -> None:
            self._stats.channel_binds += 1
            if self._book.active and self._book.channels.get(peer) == number:
                self._permitted(peer[0])
                self._channel_timers[peer] = self._reactor.callLater(
                    CHANNEL_REFRESH, self._refresh_channel, peer
                )

        def unbound(failure: Failure) -> None:
            self._book.retire(peer, number)
            self._refresh_failed(failure, f"channel {number:#06x} to {format_address(peer)}")

        d.addCallbacks(rebound, unbound)
