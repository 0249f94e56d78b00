"""
HTTP for UPnP-IGD, bounded: one request through C{twisted.web.client.Agent},
its answer read up to a size and within a time, whatever the gateway does.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse
from zope.interface import implementer

from twisted_nat.errors import PortMappingError
from twisted_nat.portmap.igd import MAX_XML

TIMEOUT = 5.0
"""Seconds one request may take, connection included: a gateway is one hop away."""

Fetch = Callable[[bytes, str, dict[bytes, bytes], bytes | None], Deferred[tuple[int, bytes]]]
"""C{fetch(method, url, headers, body)}: the answer's status and body (at most L{MAX_XML})."""


@implementer(IBodyProducer)
class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


_DONE = Failure(ResponseDone())


class _Bounded(Protocol):
    """Collects a body up to C{limit} bytes, and drops the connection beyond."""

    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._done = False

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._done = True
            self.transport.stopProducing()  # type: ignore[union-attr]
            self._finished.errback(PortMappingError(f"an answer over {self._limit} bytes"))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self._done:
            return
        self._done = True
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._parts))
        else:
            self._finished.errback(PortMappingError(f"the answer broke off: {reason.value}"))


class _QuietPool(HTTPConnectionPool):
    """
    A pool whose connection factories do not log each connection at info
    level (Twisted names its factory class privately; the pool's
    C{_factory} attribute is how it is meant to be replaced).
    """

    _factory = type("_QuietFactory", (HTTPConnectionPool._factory,), {"noisy": False})  # type: ignore[assignment]


class HTTPFetcher:
    """
    A L{Fetch} on C{reactor}: no connection is kept between requests, none
    lasts past L{TIMEOUT}, and no answer is read past L{MAX_XML} bytes.
    """

    def __init__(self, reactor: IReactorTime, timeout: float = TIMEOUT) -> None:
        self._clock = reactor
        self._timeout = timeout
        pool = _QuietPool(reactor, persistent=False)
        self._agent = Agent(reactor, connectTimeout=timeout, pool=pool)

    def __call__(
        self, method: bytes, url: str, headers: dict[bytes, bytes], body: bytes | None
    ) -> Deferred[tuple[int, bytes]]:
        fetching = Deferred.fromCoroutine(self._fetch(method, url, headers, body))
        fetching.addTimeout(self._timeout, self._clock, onTimeoutCancel=self._timed_out(url))
        return fetching.addErrback(self._failed, url)

    def _timed_out(self, url: str) -> Callable[[object, float], object]:
        def timed_out(result: object, timeout: float) -> object:
            return Failure(PortMappingError(f"{url} did not answer within {timeout:g} s"))

        return timed_out

    async def _fetch(
        self, method: bytes, url: str, headers: dict[bytes, bytes], body: bytes | None
    ) -> tuple[int, bytes]:
        producer = None if body is None else _Body(body)
        response: IResponse = await self._agent.request(
            method, url.encode("ascii"), Headers({k: [v] for k, v in headers.items()}), producer
        )
        length = response.length
        if isinstance(length, int) and length > MAX_XML:
            response.deliverBody(_Bounded(Deferred(), 0))
            raise PortMappingError(f"an answer of {length} bytes is over {MAX_XML}")
        finished: Deferred[bytes] = Deferred()
        response.deliverBody(_Bounded(finished, MAX_XML))
        return response.code, await finished

    def _failed(self, failure: Failure, url: str) -> Failure:
        if failure.check(PortMappingError):
            return failure
        raise PortMappingError(f"{url}: {failure.value}")
