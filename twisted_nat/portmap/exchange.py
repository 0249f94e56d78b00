"""
One UDP socket towards a gateway's PCP / NAT-PMP port: a request sent,
sent again on a bounded schedule, and the first fitting answer taken.

The network is hostile: only datagrams from the gateway's own address and
port count; those that do not decode, or answer another request, are
dropped and counted (L{DropLog}); a request is sent at most
C{len(schedule)} times and then fails with L{PortMappingError}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from twisted_nat.address import Address, format_address
from twisted_nat.errors import PortMappingError
from twisted_nat.limits import DropLog

T = TypeVar("T")

SCHEDULE = (0.25, 0.5, 1.0, 2.0)
"""
Waits after each transmission: RFC 6886's 250 ms doubling, cut to four
sends (3.75 s in all) so that a gateway that does not speak the protocol
costs little before the next protocol is tried.
"""


class _Pending(Generic[T]):
    def __init__(self, request: bytes, match: Callable[[bytes], T | None]) -> None:
        self.request = request
        self.match = match
        self.result: Deferred[T] = Deferred()
        self.timer: IDelayedCall | None = None
        self.sent = 0


class GatewayExchange(DatagramProtocol):
    """
    Requests to one gateway port, one at a time.  Its transport is
    connected to the gateway, so L{local_ip} is the address the gateway
    sees us at, and a gateway that refuses the port (ICMP) fails the
    request at once.
    """

    noisy = False
    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        gateway: Address,
        drops: DropLog,
        schedule: Sequence[float] = SCHEDULE,
        reopen: Callable[[GatewayExchange], object] | None = None,
    ) -> None:
        self._clock = clock
        self.gateway = gateway
        self._drops = drops
        self._schedule = tuple(schedule)
        self._pending: _Pending[Any] | None = None
        self.local_ip = "0.0.0.0"
        self._closed = False
        self._lost = False
        self._reopen = reopen

    def startProtocol(self) -> None:
        self.transport.connect(*self.gateway)  # type: ignore[union-attr]
        self.local_ip = self.transport.getHost().host  # type: ignore[union-attr]

    def ask(self, request: bytes, match: Callable[[bytes], T | None]) -> Deferred[T]:
        """
        Send C{request} until C{match} takes an answer, or the schedule
        ends.  C{match} decodes a datagram: its value, None for an answer
        to another request, C{ValueError} for a malformed one.
        """
        if self._pending is not None:
            raise PortMappingError("a request to the gateway is under way already")
        if self._lost and self._reopen is not None:
            self._lost = False
            self._reopen(self)
        if self._closed or self._lost:
            raise PortMappingError(f"no socket to {format_address(self.gateway)} any more")
        pending: _Pending[T] = _Pending(request, match)
        self._pending = pending
        self._send(pending)
        return pending.result

    def _send(self, pending: _Pending[Any]) -> None:
        if self._pending is not pending or self.transport is None:
            return
        if pending.sent == len(self._schedule):
            self._finish(pending)
            what = format_address(self.gateway)
            pending.result.errback(
                PortMappingError(f"no answer from {what} to {pending.sent} requests")
            )
            return
        wait = self._schedule[pending.sent]
        pending.sent += 1
        try:
            self.transport.write(pending.request)  # type: ignore[call-arg]
        except OSError as e:
            self.log.debug("could not send to the gateway: {error}", error=e)
        if self._pending is pending:  # a refusal (ICMP) may have ended it during the write
            pending.timer = self._clock.callLater(wait, self._send, pending)

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        if addr != self.gateway:
            self._drops.drop("stranger", "port mapping: dropped a datagram from {addr}", addr=addr)
            return
        pending = self._pending
        if pending is None:
            self._drops.drop("unasked", "port mapping: dropped an answer nothing waits for")
            return
        try:
            value = pending.match(datagram)
        except ValueError as e:
            self._drops.drop("malformed", "port mapping: dropped a malformed answer: {e}", e=e)
            return
        if value is None:
            self._drops.drop("unmatched", "port mapping: dropped an answer to another request")
            return
        self._finish(pending)
        pending.result.callback(value)

    def connectionRefused(self) -> None:
        self._refused()

    def stopProtocol(self) -> None:
        # The reactor closes a connected UDP port whose socket reports an
        # error (an ICMP port unreachable, with epoll) rather than calling
        # connectionRefused: either way nothing listens there now.  The
        # next request opens a new socket (a restarting gateway refuses for
        # a moment), if we can.
        self._lost = not self._closed
        self.transport = None
        self._refused()

    def _refused(self) -> None:
        pending = self._pending
        if pending is not None:
            self._finish(pending)
            what = format_address(self.gateway)
            pending.result.errback(PortMappingError(f"{what} refused (nothing listens there)"))

    def _finish(self, pending: _Pending[Any]) -> None:
        if pending.timer is not None and pending.timer.active():
            pending.timer.cancel()
        pending.timer = None
        if self._pending is pending:
            self._pending = None

    def close(self) -> None:
        """Stop: a request under way fails; the socket closes."""
        pending = self._pending
        if pending is not None:
            self._finish(pending)
            pending.result.errback(PortMappingError("port mapping stopped"))
        was_closed, self._closed = self._closed, True
        if self.transport is not None and not was_closed:
            self.transport.stopListening()


def open_exchange(
    reactor: IReactorUDP, clock: IReactorTime, gateway: Address, drops: DropLog
) -> GatewayExchange:
    """A L{GatewayExchange} on a new socket of C{reactor}'s, connected to C{gateway}."""

    def listen(exchange: GatewayExchange) -> None:
        reactor.listenUDP(0, exchange, "", 2048)

    exchange = GatewayExchange(clock, gateway, drops, reopen=listen)
    listen(exchange)
    return exchange
