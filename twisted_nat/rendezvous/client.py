"""
The rendezvous client: a peer's lasting connection to the rendezvous
server, providing L{ISignaling}.

    client = RendezvousClient(reactor, "tls:rendezvous.example.com:8765", "alice", identity)
    client.set_offer_handler(answer_them)
    client.startService()           # or client.setServiceParent(application)
    answer = await client.connect(offering.offer)

The connection is kept by a C{ClientService}, which reconnects with
exponential backoff whenever it drops; every new connection registers the
name again before it is used (signing the server's fresh challenge with
our key), so the server, which forgets a connection when it drops but
never the binding of our name to our key, routes offers to us again.

Calls never wait for a connection: while there is no registered connection
they fail at once with L{RendezvousUnavailable}, and a connection lost
while a call waits fails that call the same way.  The caller decides
whether to retry; a queue here would hold stale offers whose candidates
may no longer be valid by the time they went out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_nat.errors import (
    ConfigurationError,
    MalformedSignal,
    RegisteredElsewhere,
    RendezvousBusy,
    RendezvousError,
    RendezvousUnavailable,
)
from twisted_nat.rendezvous.failover import FailoverEndpoint
from twisted_nat.rendezvous.interfaces import ISignaling, OfferHandler, run_offer_handler
from twisted_nat.rendezvous.session import RendezvousClientProtocol
from twisted_nat.rendezvous.values import Answer, Offer
from twisted_nat.trust.keys import Identity, PeerKey
from twisted_nat.trust.names import normalise_name

RetryPolicy = Callable[[int], float]

DEFAULT_CALL_TIMEOUT = 30.0

VERIFY_TIMEOUT = 1.0
"""How long L{RendezvousClient.verify} waits for the server's answer."""

_T = TypeVar("_T")


def default_retry_policy() -> RetryPolicy:
    """One second, growing by half each failure up to a minute, plus up to a second of jitter."""
    return backoffPolicy(initialDelay=1.0, maxDelay=60.0, factor=1.5)


class _Factory(Factory):
    noisy = False

    def __init__(self, client: RendezvousClient) -> None:
        self._client = client

    def buildProtocol(self, addr: IAddress | None) -> RendezvousClientProtocol:
        return RendezvousClientProtocol(
            self._client._answer_offer, self._client._connected, self._client._lost
        )


@implementer(ISignaling)
class RendezvousClient(Service):
    """
    A peer registered as C{name} at the rendezvous server at C{endpoint}.

    The name is kept in C{peer_name}: C{name} belongs to C{Service}, where
    it names the service among its siblings.

    @param reactor: for timers and for the connection, so it must provide
        what the endpoint needs (C{IReactorTCP}, C{IReactorSSL}) as well as
        C{IReactorTime}.
    @param endpoint: a client endpoint string: C{"tcp:host=H:port=P"}, or
        C{"tls:H:P"} to check the server's certificate and keep the
        session keys of offers private on the way; or several, the nodes of
        one rendezvous (L{FailoverEndpoint}): the client stays registered
        at one and moves to the next when it goes away.
    @param name: the name other peers reach us by (normalised here).
    @param identity: our key: the name is registered for it, and the
        offers we send must be signed by it.
    @param retry_policy: seconds to wait before reconnection attempt n
        (as for C{ClientService}); L{default_retry_policy} if not given.
        A connection whose registration is refused is dropped, and the
        next attempt waits as long as after a first failed one.
    @param call_timeout: how long L{connect} and L{register} wait for the
        server before failing with L{RendezvousUnavailable}; longer than
        the server's relay timeout, so that its more precise
        L{twisted_nat.errors.PeerUnavailable} arrives first.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: str | Sequence[str],
        name: str,
        identity: Identity,
        retry_policy: RetryPolicy | None = None,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
    ) -> None:
        try:
            name = normalise_name(name)
        except ValueError as e:
            raise ConfigurationError(str(e)) from None
        descriptions = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        if not descriptions:
            raise ConfigurationError("a rendezvous client needs a server endpoint")
        endpoints = []
        for description in descriptions:
            try:
                endpoints.append((description, clientFromString(reactor, description)))
            except (ValueError, KeyError, TypeError) as e:
                raise ConfigurationError(
                    f"bad rendezvous server endpoint {description!r}: {e}"
                ) from None
        self.nodes = FailoverEndpoint(endpoints, reactor)
        self.peer_name = name
        self.identity = identity
        self.call_timeout = call_timeout
        self._reactor = reactor
        self._handler: OfferHandler | None = None
        self._protocol: RendezvousClientProtocol | None = None
        self._waiters: list[Deferred[None]] = []
        self._registrations = 0
        self._taken: RegisteredElsewhere | None = None
        self._policy = retry_policy or default_retry_policy()
        self._verifying: RendezvousClientProtocol | None = None
        self._at_once = False
        self._service = ClientService(
            self.nodes, _Factory(self), retryPolicy=self._retry_delay, clock=reactor
        )

    @property
    def endpoint(self) -> str:
        """The node we are connected to, or (not connected) every node we know."""
        return self.nodes.current or " or ".join(d for d, _ in self.nodes.endpoints)

    # --- the service ---

    def startService(self) -> None:
        super().startService()
        self._service.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        stopped = self._service.stopService()
        self._fail_waiters(RendezvousUnavailable("the rendezvous client was stopped"))
        return stopped

    @property
    def registered(self) -> bool:
        """Whether we are connected and registered right now."""
        return self._protocol is not None

    def when_registered(self) -> Deferred[None]:
        """
        Fire when we are connected and registered: at once if we are now,
        else after the next successful registration.

        It fails with the server's refusal (L{DuplicateName}) if the next
        registration is refused, and with L{RendezvousUnavailable} if the
        client is stopped first.  Failed connection attempts do not fail it:
        the client keeps trying.  Once another connection has taken our key
        it fails at once with L{RegisteredElsewhere}.
        """
        if self._protocol is not None:
            return defer.succeed(None)
        if self._taken is not None:
            return defer.fail(self._taken)
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        return waiter

    def _fail_waiters(self, error: Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.errback(error)

    # --- connection events (from the protocol) ---

    def _connected(self, protocol: RendezvousClientProtocol) -> None:
        self.log.debug(
            "Connected to the rendezvous server at {endpoint}; registering as {name}",
            endpoint=self.endpoint,
            name=self.peer_name,
        )
        name = self.peer_name
        d = protocol.register(name, self.identity)
        d.addTimeout(self.call_timeout, self._reactor)
        d.addCallbacks(
            self._registered,
            self._refused,
            callbackArgs=(protocol, name),
            errbackArgs=(protocol, name),
        )

    def _registered(self, result: None, protocol: RendezvousClientProtocol, name: str) -> None:
        if not protocol.connected or not self.running:
            return
        self._protocol = protocol
        self._registrations += 1
        if self._registrations == 1:
            self.log.info(
                "Registered as {name} at the rendezvous server at {endpoint}",
                name=name,
                endpoint=self.endpoint,
            )
        else:
            self.log.info(
                "Reconnected to the rendezvous server at {endpoint} and registered as {name} again",
                name=name,
                endpoint=self.endpoint,
            )
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _refused(self, failure: Failure, protocol: RendezvousClientProtocol, name: str) -> None:
        if not protocol.connected:
            return  # _lost has said what happened
        self.log.warn(
            "The rendezvous server at {endpoint} did not register {name} ({error}); "
            "disconnecting to try again later",
            endpoint=self.endpoint,
            name=name,
            error=failure.value,
        )
        if failure.check(RendezvousError) and not failure.check(RendezvousBusy):
            # Busy is for now only: the waiters wait for the next attempt.
            assert isinstance(failure.value, Exception)
            self._fail_waiters(failure.value)
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    def _lost(self, protocol: RendezvousClientProtocol, reason: Failure) -> None:
        endpoint = self.endpoint
        if protocol is self._verifying:
            self._verifying = None
            self._at_once = True
        self.nodes.lost()  # the next attempt starts with the next node
        if protocol.superseded is not None and self.running:
            self._superseded(protocol.superseded, endpoint)
        if protocol is not self._protocol:
            return
        self._protocol = None
        if self.running:
            self.log.info(
                "Lost the connection to the rendezvous server at {endpoint} ({reason}); "
                "reconnecting",
                endpoint=endpoint,
                reason=reason.getErrorMessage(),
            )

    def _retry_delay(self, attempt: int) -> float:
        if self._at_once:
            self._at_once = False
            return 0.0
        return self._policy(attempt)

    def verify(self, timeout: float = VERIFY_TIMEOUT) -> Deferred[bool]:
        """
        Whether our connection still answers: a lookup of our own name,
        given C{timeout} seconds, fires True if it does.  A connection that
        fails it (reset, or silent and then dropped here) is made again at
        once instead of after the retry policy's first delay: whoever asks
        has seen a path die (a NAT that lost its bindings) and waited
        already.  Failures after that wait as the policy says.
        """
        protocol = self._protocol
        if protocol is None:
            return defer.succeed(False)
        self._verifying = protocol
        d = protocol.lookup(self.peer_name)
        d.addTimeout(timeout, self._reactor)

        def answered(result: object) -> bool:
            if self._verifying is protocol:
                self._verifying = None
            return True

        def silent(failure: Failure) -> bool:
            if protocol is self._protocol and protocol.transport is not None:
                self.log.info(
                    "The rendezvous server at {endpoint} did not answer in {timeout:g} s; "
                    "reconnecting",
                    endpoint=self.endpoint,
                    timeout=timeout,
                )
                self._protocol = None  # not registered from now: the loss comes a turn later
                protocol.transport.abortConnection()  # type: ignore[attr-defined]
            return False

        return d.addCallbacks(answered, silent)

    def _superseded(self, reason: str, endpoint: str) -> None:
        """Another connection holds our key now: stop, rather than take it back in turn."""
        self.log.error(
            "The rendezvous server at {endpoint} closed our connection: {reason}. Another "
            "process holds our key {key}; this one stops registering as {name}",
            endpoint=endpoint,
            reason=reason,
            key=self.identity.public.short,
            name=self.peer_name,
        )
        self._service.stopService()
        self._taken = RegisteredElsewhere(f"{endpoint}: {reason}")
        self._fail_waiters(self._taken)

    def _answer_offer(self, offer: Offer) -> Deferred[Answer]:
        self.log.debug("Offer from {name}", name=offer.from_name)
        return run_offer_handler(self._handler, offer, self.log)

    # --- ISignaling ---

    def _call_failed(self, result: Any, timeout: float) -> Any:
        if isinstance(result, Failure) and result.check(defer.CancelledError):
            return Failure(
                RendezvousUnavailable(f"no answer from the rendezvous server in {timeout:g} s")
            )
        return result

    def _call(self, call: Callable[[RendezvousClientProtocol], Deferred[_T]]) -> Deferred[_T]:
        """
        Make C{call} on the connection: it fails at once if there is no
        connection, and with L{RendezvousUnavailable} after C{call_timeout}
        seconds without an answer.
        """
        protocol = self._protocol
        if protocol is None:
            return defer.fail(RendezvousUnavailable("not connected to the rendezvous server"))
        d = call(protocol)
        return d.addTimeout(self.call_timeout, self._reactor, onTimeoutCancel=self._call_failed)

    def register(self, name: str) -> Deferred[None]:
        """
        Change the name we are registered as; later reconnections register
        the new one.  If the server refuses it we keep the old name.
        """
        try:
            name = normalise_name(name)
        except ValueError as e:
            return defer.fail(MalformedSignal(str(e)))

        def renamed(result: None) -> None:
            self.peer_name = name
            self.log.info("Registered as {name} at the rendezvous server", name=name)

        return self._call(lambda protocol: protocol.register(name, self.identity)).addCallback(
            renamed
        )

    def release(self, name: str) -> Deferred[None]:
        """Unbind C{name} from our key at the server, for good, so another key may take it."""
        try:
            name = normalise_name(name)
        except ValueError as e:
            return defer.fail(MalformedSignal(str(e)))
        return self._call(lambda protocol: protocol.release(name, self.identity))

    def lookup(self, name: str) -> Deferred[PeerKey]:
        try:
            name = normalise_name(name)
        except ValueError as e:
            return defer.fail(MalformedSignal(str(e)))
        return self._call(lambda protocol: protocol.lookup(name))

    def connect(self, offer: Offer) -> Deferred[Answer]:
        return self._call(lambda protocol: protocol.connect(offer))

    def set_offer_handler(self, handler: OfferHandler | None) -> None:
        self._handler = handler

    def close(self) -> Deferred[None]:
        """Stop the service (if it runs): disconnect and stop reconnecting."""
        if not self.running:
            return defer.succeed(None)
        return self.stopService()
