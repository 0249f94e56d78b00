"""
Discovery of a socket's public address: several STUN servers raced, with
fallback to the next when one fails, and one deadline for the whole run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.address import Address
from twisted_nat.errors import DiscoveryError, STUNTimeout, TransactionCancelled
from twisted_nat.stun.client.transaction import Response


@attrs.frozen
class DiscoveryResult:
    """The public (server-reflexive) address of a socket, as one server saw it."""

    mapped: Address
    local: Address
    server: Address
    rtt: float
    other_address: Address | None = None


class DiscoveryRace:
    """
    One run of L{twisted_nat.stun.client.STUNClient.discover}.

    The first C{race} servers are asked at once; whenever one fails the next
    is started; the first good answer wins and every other transaction and
    timer is cancelled.  The whole run ends after C{timeout} seconds.

    @param resolve: a server's address with its host name resolved.
    @param bind: a Binding request to a resolved address, given the seconds
        left before the deadline.
    @param local_address: the socket's own address, for the result.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        resolve: Callable[[Address], Deferred[Address]],
        bind: Callable[[Address, float], Deferred[Response]],
        local_address: Callable[[], Address],
        servers: list[Address],
        timeout: float,
        race: int,
    ) -> None:
        self._reactor = reactor
        self._resolve = resolve
        self._bind = bind
        self._local_address = local_address
        self._waiting = list(servers)
        self._race = race
        self._timeout = timeout
        self._running: dict[Address, Deferred[Any]] = {}
        self._failures: dict[Address, BaseException] = {}
        self._result: Deferred[DiscoveryResult] = Deferred(lambda d: self._stop())
        self._deadline: IDelayedCall | None = None
        self._started = 0.0
        self._done = False

    def start(self) -> Deferred[DiscoveryResult]:
        """
        @return: a Deferred firing with a L{DiscoveryResult}, or failing
            with L{DiscoveryError} listing what each server did.
        """
        self._started = self._reactor.seconds()
        if not self._waiting:
            self._fail()
            return self._result
        self._deadline = self._reactor.callLater(self._timeout, self._expire)
        for _ in range(min(self._race, len(self._waiting))):
            self._next()
        return self._result

    def _remaining(self) -> float:
        return self._timeout - (self._reactor.seconds() - self._started)

    def _next(self) -> None:
        if self._done:
            return
        if not self._waiting:
            if not self._running:
                self._fail()
            return
        server = self._waiting.pop(0)
        d: Deferred[Any] = self._resolve(server)
        d.addCallback(lambda address: self._bind(address, self._remaining()))
        self._running[server] = d
        d.addCallbacks(self._won, self._lost, errbackArgs=(server,))

    def _won(self, response: Response) -> None:
        if self._done:
            return
        mapped = response.mapped_address
        if mapped is None:
            self._failures[response.server] = ValueError("response without a mapped address")
            self._running.pop(response.server, None)
            self._next()
            return
        result = DiscoveryResult(
            mapped=mapped,
            local=self._local_address(),
            server=response.server,
            rtt=response.rtt,
            other_address=response.other_address,
        )
        self._stop()
        self._result.callback(result)

    def _lost(self, failure: Failure, server: Address) -> None:
        if self._done:
            return
        self._running.pop(server, None)
        self._failures[server] = failure.value or RuntimeError("unknown failure")
        self.log.debug("STUN server {server} failed: {error}", server=server, error=failure.value)
        self._next()

    def _expire(self) -> None:
        self._deadline = None
        for server in self._running:
            self._failures.setdefault(server, STUNTimeout(server, None, self._timeout))
        for server in self._waiting:
            self._failures.setdefault(server, TransactionCancelled("not tried before the deadline"))
        self._fail()

    def _fail(self) -> None:
        failures = dict(self._failures)
        self._stop()
        self._result.errback(DiscoveryError(failures))

    def _stop(self) -> None:
        self._done = True
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None
        running, self._running = self._running, {}
        for d in running.values():
            d.addErrback(lambda f: None)
            d.cancel()
        self._waiting = []
