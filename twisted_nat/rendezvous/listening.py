"""
The rendezvous server as a Twisted service: L{RendezvousServerFactory}
listening on a server endpoint string, with its name registry opened and
closed with it.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.address import format_address
from twisted_nat.errors import ConfigurationError
from twisted_nat.rendezvous.directory import ClusterNodes
from twisted_nat.rendezvous.interfaces import DEFAULT_RELAY_TIMEOUT
from twisted_nat.rendezvous.quotas import ServerLimits
from twisted_nat.rendezvous.registry import INameRegistry, open_registry
from twisted_nat.rendezvous.server import RendezvousServerFactory


class RendezvousService(Service):
    """
    Serves rendezvous on a server endpoint string while running.

    The socket is bound in C{privilegedStartService}, so that twistd can
    bind a low port before dropping privileges, and a listening failure that
    is known at once is raised from there (for TCP it always is), so that a
    bad port ends the process instead of leaving a server that serves
    nothing.  L{when_listening} gives the port, for tests that listen on
    port 0.

    @param reactor: listens (so it provides what the endpoint needs, such
        as C{IReactorTCP}) and times relays out.
    @param endpoint: a server endpoint string, e.g. C{"tcp:8765"}.
    @param relay_timeout: as for L{RendezvousServerFactory}.
    @param factory: the factory to serve, if not a new one.
    @param registry: where a new factory keeps the names bound to keys: a
        SQLite file, kept across restarts, or (None) memory only, for a
        demo; the service closes it when it stops.
    @param limits: what strangers may hold, for a new factory; the defaults
        if not given.
    @param cluster: for a new factory, the other nodes to share peers with
        and the registry they share (instead of C{registry}); the service
        starts and stops it.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: str,
        relay_timeout: float = DEFAULT_RELAY_TIMEOUT,
        factory: RendezvousServerFactory | None = None,
        registry: str | None = None,
        limits: ServerLimits | None = None,
        cluster: ClusterNodes | None = None,
    ) -> None:
        try:
            self._endpoint = serverFromString(reactor, endpoint)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigurationError(f"bad rendezvous server endpoint {endpoint!r}: {e}") from None
        self.endpoint = endpoint
        self._registry: INameRegistry | None = None
        self._cluster = cluster
        if factory is None:
            if cluster is not None:
                if registry is not None:
                    raise ConfigurationError(
                        "the rendezvous nodes share Redis, not a registry file"
                    )
                self._registry = cluster.registry
            else:
                self._registry = open_registry(registry)
            factory = RendezvousServerFactory(
                reactor, relay_timeout, self._registry, limits, cluster
            )
        self.factory = factory
        self.port: IListeningPort | None = None
        self._started = False
        self._listen_error: Failure | None = None
        self._waiters: list[Deferred[IListeningPort]] = []

    def privilegedStartService(self) -> None:
        self._listen()
        super().privilegedStartService()

    def startService(self) -> None:
        if self._cluster is not None:
            self._cluster.startService()
        if not self._started:
            self._listen()
        super().startService()

    def _listen(self) -> None:
        self._started = True
        self._listen_error = None
        self._endpoint.listen(self.factory).addCallbacks(self._listened, self._listen_failed)
        if self._listen_error is not None:
            error, self._listen_error = self._listen_error, None
            self._started = False
            error.raiseException()

    def _listened(self, port: IListeningPort) -> None:
        if not self._started:  # stopped while the endpoint was still binding
            port.stopListening()
            return
        self.port = port
        host = port.getHost()
        self.log.info(
            "Rendezvous server listening on {address}",
            address=(
                format_address((host.host, host.port))
                if isinstance(host, IPv4Address | IPv6Address)
                else str(host)
            ),
        )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(port)

    def _listen_failed(self, failure: Failure) -> None:
        self.log.error(
            "The rendezvous server cannot listen on {endpoint}: {error}",
            endpoint=self.endpoint,
            error=failure.getErrorMessage(),
        )
        self._listen_error = failure
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(failure)

    def status(self) -> dict[str, object]:
        """The server's state (L{RendezvousServerFactory.status}) and where it listens."""
        host = self.port.getHost() if self.port is not None else None
        listening = (
            format_address((host.host, host.port))
            if isinstance(host, IPv4Address | IPv6Address)
            else None
        )
        return {"listening": listening, **self.factory.status()}

    def when_listening(self) -> Deferred[IListeningPort]:
        """The listening port, once the endpoint has bound it."""
        if self.port is not None:
            return defer.succeed(self.port)
        if self._listen_error is not None:
            return defer.fail(self._listen_error)
        if not self._started:
            return defer.fail(ConfigurationError("the rendezvous service is not running"))
        waiter: Deferred[IListeningPort] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._started = False
        port, self.port = self.port, None
        stopping = [self.factory.disconnect_all()]
        if self._registry is not None:
            registry = self._registry
            stopping[0].addCallback(lambda _: registry.close())
        if self._cluster is not None:
            cluster = self._cluster
            stopping[0].addCallback(lambda _: cluster.stopService())
        if port is not None:
            stopped = port.stopListening()
            if stopped is not None:
                stopping.append(stopped)
        return defer.gatherResults(stopping).addCallback(lambda _: None)


def make_rendezvous_service(
    reactor: IReactorTime,
    endpoint: str,
    relay_timeout: float = DEFAULT_RELAY_TIMEOUT,
    registry: str | None = None,
    limits: ServerLimits | None = None,
    cluster: ClusterNodes | None = None,
) -> RendezvousService:
    """
    A rendezvous server on C{endpoint} (a server endpoint string such as
    C{"tcp:8765:interface=127.0.0.1"}), to be started or given a parent;
    C{reactor} and C{cluster} as for L{RendezvousService}.
    """
    return RendezvousService(
        reactor, endpoint, relay_timeout, registry=registry, limits=limits, cluster=cluster
    )
