"""
The STUN client: a transaction table on a UDP socket, and discovery of the
public address against several servers.

L{STUNClient} is a C{DatagramProtocol}.  It can own a socket of its own
(C{reactor.listenUDP(0, client)}) or share one through
L{twisted_nat.mux.UDPMultiplexer} (C{mux.add_stun(client, ...)}), which is
how the rest of twisted-nat uses it: the address it discovers is then the
NAT binding of the very socket that punching and keep-alive will use.

Each request is a transaction in the shape of C{twisted.names.dns}: a dict
from transaction id to the Deferred and the DelayedCall of its next
retransmission.  The schedule is RFC 8489 section 6.2.1's: the request is
sent at 0, RTO, 3 RTO, 7 RTO, ... (C{Rc} sends in all), and the transaction
fails C{Rm} RTO after the last one.  All timers come from the
C{IReactorTime} given to the constructor, so tests drive them with a
C{task.Clock}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    IResolutionReceiver,
)
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_nat.errors import (
    DiscoveryError,
    STUNDecodeError,
    STUNErrorResponse,
    STUNTimeout,
    TransactionCancelled,
)
from twisted_nat.stun.attributes import (
    ErrorCode,
    MappedAddress,
    OtherAddress,
    ResponseOrigin,
    Software,
    XorMappedAddress,
)
from twisted_nat.stun.message import (
    Message,
    MessageClass,
    Method,
    check_integrity,
    decode,
    encode,
    has_integrity,
    request,
    with_integrity,
)

Address = tuple[str, int]
Resolver = Callable[[str], "Deferred[str]"]

DEFAULT_STUN_PORT = 3478
SOFTWARE = "twisted-nat"


@attrs.frozen
class RetransmissionSchedule:
    """
    RFC 8489 section 6.2.1's timer values.

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


@attrs.frozen
class DiscoveryResult:
    """The public (server-reflexive) address of a socket, as one server saw it."""

    mapped: Address
    local: Address
    server: Address
    rtt: float
    other_address: Address | None = None


@attrs.define
class ClientStats:
    """Counters; every datagram that is not a valid answer is counted here."""

    requests: int = 0
    transmissions: int = 0
    responses: int = 0
    timeouts: int = 0
    dropped_malformed: int = 0
    dropped_unmatched: int = 0
    dropped_wrong_source: int = 0
    dropped_integrity: int = 0


class _Transaction:
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
    ) -> None:
        self.data = data
        self.destination = destination
        self.schedule = schedule
        self.key = key
        self.match_source = match_source
        self.started = started
        self.last_sent = started
        self.attempts = 0
        self.timer: IDelayedCall | None = None
        self.deferred: Deferred[Response] = Deferred()


class STUNClient(DatagramProtocol):
    """
    STUN requests over UDP, and public address discovery.

    @param stun_servers: C{(host, port)} pairs for L{discover}; host names
        are resolved without blocking, when first needed.
    @param timeout: L{discover}'s overall deadline, in seconds.
    @param reactor: the C{IReactorTime} for every timer (and, when it has
        one, its name resolver); a C{task.Clock} in tests.
    @param schedule: the retransmission schedule of each request.
    @param race: how many servers L{discover} asks at once.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        stun_servers: Sequence[Address] = (),
        timeout: float = 5.0,
        reactor: IReactorTime | None = None,
        schedule: RetransmissionSchedule | None = None,
        race: int = 2,
        resolver: Resolver | None = None,
        software: str | None = SOFTWARE,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        assert reactor is not None
        self.stun_servers = list(stun_servers)
        self.timeout = timeout
        self.schedule = schedule or RetransmissionSchedule()
        self.race = max(1, race)
        self.software = software
        self.stats = ClientStats()
        self._reactor: IReactorTime = reactor
        self._resolver = resolver
        self._transactions: dict[bytes, _Transaction] = {}

    # --- transactions ---

    def request(
        self,
        message: Message,
        server: Address,
        key: bytes | None = None,
        schedule: RetransmissionSchedule | None = None,
        match_source: bool = True,
        deadline: float | None = None,
    ) -> Deferred[Response]:
        """
        Send C{message} (a request) to C{server} and wait for its answer.

        The answer must carry C{message}'s transaction id and, unless
        C{match_source} is false (RFC 5780 CHANGE-REQUEST answers come from
        elsewhere), come from C{server}.  With a C{key}, the request is
        signed (MESSAGE-INTEGRITY and FINGERPRINT are added unless it
        carries integrity attributes already) and a success response must
        verify under it.

        @return: a Deferred firing with a L{Response}, or failing with
            L{STUNTimeout}, L{STUNErrorResponse}, or L{TransactionCancelled}
            when the client stops.  Cancelling it abandons the transaction.
        """
        if self.transport is None:
            return defer.fail(TransactionCancelled("the STUN client is not listening"))
        schedule = schedule or self.schedule
        if key is not None and not has_integrity(message):
            message = with_integrity(message)
        tid = message.transaction_id
        if tid in self._transactions:
            return defer.fail(ValueError("transaction id already in use"))
        transaction = _Transaction(
            encode(message, key=key),
            server,
            schedule,
            key,
            match_source,
            self._reactor.seconds(),
        )
        transaction.deferred = Deferred(lambda d: self._cancel(tid))
        self._transactions[tid] = transaction
        self.stats.requests += 1
        if deadline is not None and deadline < schedule.total:
            self._deadline_cap(tid, deadline)
        self._transmit(tid)
        return transaction.deferred

    def _deadline_cap(self, tid: bytes, deadline: float) -> None:
        """Fail the transaction at C{deadline} even if its schedule runs longer."""
        timer = self._reactor.callLater(deadline, self._expire, tid)
        transaction = self._transactions[tid]

        def cancel_cap(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        transaction.deferred.addBoth(cancel_cap)

    def _transmit(self, tid: bytes) -> None:
        transaction = self._transactions.get(tid)
        if transaction is None or self.transport is None:
            return
        transaction.attempts += 1
        transaction.last_sent = self._reactor.seconds()
        self.stats.transmissions += 1
        self.transport.write(transaction.data, transaction.destination)
        delay = transaction.schedule.delay_after(transaction.attempts)
        if transaction.attempts < transaction.schedule.rc:
            transaction.timer = self._reactor.callLater(delay, self._transmit, tid)
        else:
            transaction.timer = self._reactor.callLater(delay, self._expire, tid)

    def _expire(self, tid: bytes) -> None:
        transaction = self._finish(tid)
        if transaction is None:
            return
        self.stats.timeouts += 1
        elapsed = self._reactor.seconds() - transaction.started
        transaction.deferred.errback(
            STUNTimeout(transaction.destination, transaction.attempts, elapsed)
        )

    def _finish(self, tid: bytes) -> _Transaction | None:
        transaction = self._transactions.pop(tid, None)
        if transaction is not None and transaction.timer is not None:
            if transaction.timer.active():
                transaction.timer.cancel()
            transaction.timer = None
        return transaction

    def _cancel(self, tid: bytes) -> None:
        self._finish(tid)

    def pending(self) -> int:
        """How many transactions are in flight."""
        return len(self._transactions)

    # --- the protocol ---

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        try:
            message = decode(datagram)
        except STUNDecodeError as e:
            self.stats.dropped_malformed += 1
            self.log.debug("dropped malformed datagram from {addr}: {error}", addr=addr, error=e)
            return
        transaction = self._transactions.get(message.transaction_id)
        if transaction is None or message.message_class in (
            MessageClass.REQUEST,
            MessageClass.INDICATION,
        ):
            self.stats.dropped_unmatched += 1
            self.log.debug("dropped unmatched STUN message from {addr}", addr=addr)
            return
        if transaction.match_source and addr != transaction.destination:
            self.stats.dropped_wrong_source += 1
            self.log.debug(
                "dropped response from {addr}, expected {expected}",
                addr=addr,
                expected=transaction.destination,
            )
            return
        if (
            transaction.key is not None
            and message.message_class == MessageClass.SUCCESS
            and not check_integrity(message, transaction.key)
        ):
            self.stats.dropped_integrity += 1
            self.log.debug("dropped response from {addr} failing integrity", addr=addr)
            return
        self._finish(message.transaction_id)
        self.stats.responses += 1
        now = self._reactor.seconds()
        elapsed = now - transaction.started
        if message.message_class == MessageClass.ERROR:
            error = message.get(ErrorCode)
            code, reason = (error.code, error.reason) if error else (500, "no ERROR-CODE")
            transaction.deferred.errback(
                STUNErrorResponse(transaction.destination, code, reason, message)
            )
            return
        transaction.deferred.callback(
            Response(
                message,
                addr,
                transaction.destination,
                transaction.attempts,
                elapsed,
                now - transaction.last_sent,
            )
        )

    def doStop(self) -> None:
        """Fail every transaction in flight: nothing can answer them now."""
        for tid in list(self._transactions):
            transaction = self._finish(tid)
            if transaction is not None:
                transaction.deferred.errback(TransactionCancelled("the STUN client stopped"))
        super().doStop()

    # --- discovery ---

    def binding_request(self, server: Address, **kwargs: Any) -> Deferred[Response]:
        """A plain Binding request to C{server} (keywords as for L{request})."""
        attributes = [Software(self.software)] if self.software else []
        return self.request(request(Method.BINDING, attributes), server, **kwargs)

    def discover(self, servers: Iterable[Address] | None = None) -> Deferred[DiscoveryResult]:
        """
        Find this socket's public address.

        The first C{race} servers are asked at once; whenever one fails the
        next is started; the first good answer wins and every other
        transaction and timer is cancelled.  The whole attempt ends after
        C{timeout} seconds.

        @return: a Deferred firing with a L{DiscoveryResult}, or failing
            with L{DiscoveryError} listing what each server did.
        """
        candidates = list(servers if servers is not None else self.stun_servers)
        return _Discovery(self, candidates, self.timeout, self.race).start()

    def resolve(self, server: Address) -> Deferred[Address]:
        """Resolve C{server}'s host name (IP literals pass through)."""
        host, port = server
        if isIPAddress(host) or isIPv6Address(host):
            return defer.succeed((host, port))
        resolver = self._resolver or self._resolve_with_reactor
        return resolver(host).addCallback(lambda ip: (ip, port))

    def _resolve_with_reactor(self, host: str) -> Deferred[str]:
        """
        Resolve through the reactor's C{nameResolver} (threaded, never
        blocking the reactor), for the address family of our socket.
        """
        name_resolver = getattr(self._reactor, "nameResolver", None)
        if name_resolver is None:
            return defer.fail(DNSLookupError(f"cannot resolve {host!r}: reactor has no resolver"))
        ipv6 = self.transport is not None and isinstance(self.transport.getHost(), IPv6Address)
        receiver = _FirstAddress(host)
        name_resolver.resolveHostName(
            receiver,
            host,
            0,
            addressTypes=[IPv6Address if ipv6 else IPv4Address],
            transportSemantics="UDP",
        )
        return receiver.deferred

    def local_address(self) -> Address:
        assert self.transport is not None
        host = self.transport.getHost()
        return (host.host, host.port)


@implementer(IResolutionReceiver)
class _FirstAddress:
    """Collects a host name's resolution and fires with its first address."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.deferred: Deferred[str] = Deferred()
        self._found: list[str] = []

    def resolutionBegan(self, resolutionInProgress: object) -> None:
        pass

    def addressResolved(self, address: IAddress) -> None:
        if isinstance(address, IPv4Address | IPv6Address):
            self._found.append(address.host)

    def resolutionComplete(self) -> None:
        if self._found:
            self.deferred.callback(self._found[0])
        else:
            self.deferred.errback(DNSLookupError(f"{self.host!r} has no address"))


class _Discovery:
    """One run of L{STUNClient.discover}: a race with fallback and a deadline."""

    def __init__(
        self, client: STUNClient, servers: list[Address], timeout: float, race: int
    ) -> None:
        self._client = client
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
        reactor = self._client._reactor
        self._started = reactor.seconds()
        if not self._waiting:
            self._fail()
            return self._result
        self._deadline = reactor.callLater(self._timeout, self._expire)
        for _ in range(min(self._race, len(self._waiting))):
            self._next()
        return self._result

    def _remaining(self) -> float:
        return self._timeout - (self._client._reactor.seconds() - self._started)

    def _next(self) -> None:
        if self._done:
            return
        if not self._waiting:
            if not self._running:
                self._fail()
            return
        server = self._waiting.pop(0)
        d = self._client.resolve(server)
        d.addCallback(
            lambda address: self._client.binding_request(address, deadline=self._remaining())
        )
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
            local=self._client.local_address(),
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
        self._client.log.debug(
            "STUN server {server} failed: {error}", server=server, error=failure.value
        )
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
