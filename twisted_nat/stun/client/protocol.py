"""
The STUN client: a transaction table on a UDP socket.

L{STUNClient} is a C{DatagramProtocol}.  It can own a socket of its own
(C{reactor.listenUDP(0, client)}) or share one through
L{twisted_nat.mux.UDPMultiplexer} (C{mux.add_stun(client, ...)}), which is
how the rest of twisted-nat uses it: the address it discovers is then the
NAT binding of the very socket that punching and keep-alive will use.

Each request is a transaction in the shape of C{twisted.names.dns}: a dict
from transaction id to the Deferred and the DelayedCall of its next
retransmission, on the L{RetransmissionSchedule} of RFC 8489 section 6.2.1.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from twisted_nat.address import Address
from twisted_nat.errors import (
    STUNDecodeError,
    STUNErrorResponse,
    STUNTimeout,
    TransactionCancelled,
)
from twisted_nat.stun.attributes.error import ErrorCode
from twisted_nat.stun.attributes.registry import STUN_ATTRIBUTES, AttributeTable
from twisted_nat.stun.attributes.text import Software
from twisted_nat.stun.client.discovery import DiscoveryRace, DiscoveryResult
from twisted_nat.stun.client.resolution import Resolver, resolve_with_reactor
from twisted_nat.stun.client.transaction import Response, RetransmissionSchedule, Transaction
from twisted_nat.stun.message.codec import decode, encode
from twisted_nat.stun.message.integrity import check_integrity
from twisted_nat.stun.message.value import (
    Message,
    MessageClass,
    Method,
    has_integrity,
    request,
    with_integrity,
)

DEFAULT_STUN_PORT = 3478
SOFTWARE = "twisted-nat"


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


class STUNClient(DatagramProtocol):
    """
    STUN requests over UDP, and public address discovery.

    @param stun_servers: C{(host, port)} pairs for L{discover}; host names
        are resolved without blocking, when first needed.
    @param timeout: L{discover}'s overall deadline, in seconds.
    @param reactor: the reactor for every timer and, when it has one, its
        name resolver; the global reactor when None.  A C{task.Clock} in
        tests.
    @param schedule: the retransmission schedule of each request.
    @param race: how many servers L{discover} asks at once.
    @param resolver: resolves host names instead of the reactor.
    @param software: the SOFTWARE attribute of Binding requests, or None.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        stun_servers: Sequence[Address] = (),
        timeout: float = 5.0,
        *,
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
        self._transactions: dict[bytes, Transaction] = {}

    # --- transactions ---

    def request(
        self,
        message: Message,
        server: Address,
        key: bytes | None = None,
        schedule: RetransmissionSchedule | None = None,
        match_source: bool = True,
        deadline: float | None = None,
        table: AttributeTable = STUN_ATTRIBUTES,
    ) -> Deferred[Response]:
        """
        Send C{message} (a request) to C{server} and wait for its answer.

        The answer must carry C{message}'s transaction id and, unless
        C{match_source} is false (RFC 5780 CHANGE-REQUEST answers come from
        elsewhere), come from C{server}.  With a C{key}, the request is
        signed (MESSAGE-INTEGRITY and FINGERPRINT are added unless it
        carries integrity attributes already) and a success response must
        verify under it.  The answer is decoded with C{table}: a protocol
        built on STUN (TURN) passes its own.

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
        transaction = Transaction(
            encode(message, key=key),
            server,
            schedule,
            key,
            match_source,
            self._reactor.seconds(),
            table,
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

    def _finish(self, tid: bytes) -> Transaction | None:
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
        if type(datagram) is not bytes:
            datagram = bytes(datagram)
        # The transaction id sits at bytes 8-20; the transaction says which
        # attribute table its answer is decoded with.
        transaction = self._transactions.get(datagram[8:20])
        try:
            message = decode(
                datagram, table=STUN_ATTRIBUTES if transaction is None else transaction.table
            )
        except STUNDecodeError as e:
            self.stats.dropped_malformed += 1
            self.log.debug("dropped malformed datagram from {addr}: {error}", addr=addr, error=e)
            return
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
        Find this socket's public address: the servers (C{stun_servers}
        unless given) are raced as L{DiscoveryRace} describes, within
        C{timeout} seconds.

        @return: a Deferred firing with a L{DiscoveryResult}, or failing
            with L{twisted_nat.errors.DiscoveryError} listing what each
            server did.
        """
        candidates = list(servers if servers is not None else self.stun_servers)
        return DiscoveryRace(
            self._reactor,
            self.resolve,
            lambda address, deadline: self.binding_request(address, deadline=deadline),
            self.local_address,
            candidates,
            self.timeout,
            self.race,
        ).start()

    def resolve(self, server: Address) -> Deferred[Address]:
        """Resolve C{server}'s host name (IP literals pass through)."""
        host, port = server
        if isIPAddress(host) or isIPv6Address(host):
            return defer.succeed((host, port))
        if self._resolver is not None:
            resolved = self._resolver(host)
        else:
            ipv6 = self.transport is not None and isinstance(self.transport.getHost(), IPv6Address)
            resolved = resolve_with_reactor(self._reactor, host, ipv6)
        return resolved.addCallback(lambda ip: (ip, port))

    def local_address(self) -> Address:
        assert self.transport is not None
        host = self.transport.getHost()
        return (host.host, host.port)
