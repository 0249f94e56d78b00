"""
The TURN client (RFC 8656): allocations, permissions, channels and relayed
data, on the shared UDP socket or over a stream (TCP, TLS).

A relay is what is left when hole punching fails (a symmetric NAT on both
sides, a firewall that only lets UDP out to a few servers): the TURN server
lends us a public address, the I{relayed address}, and forwards between it
and our socket.  The allocation only helps if it belongs to the socket that
everything else uses, so on UDP the client lives on the multiplexer like
every other protocol (see C{docs/architecture.md}):

  - its requests (Allocate, Refresh, CreatePermission, ChannelBind) are
    transactions of a L{STUNClient} to which the multiplexer routes the
    answers of those four methods;
  - the L{TURNClient} itself gets Data indications (method DATA, class
    INDICATION) and ChannelData (first byte 64-79).

Over a stream (L{connect_stream}) the same pieces run on a private
multiplexer fed by a L{StreamFramer}, so the rest of the code cannot tell
the difference; only the framing (ChannelData padded to 4 bytes) and the
retransmissions (none: the stream is reliable, RFC 8489 6.2.2) change.

Each request carries the long-term credential (RFC 8489 9.2): the first
Allocate goes without, the server's 401 names the realm and a nonce, and
everything after is signed with C{MD5(username:realm:password)} (or SHA-256
when the server offers PASSWORD-ALGORITHMS).  A 438 (stale nonce) brings a
fresh nonce and the request is retried once with it, whatever the method.

All time comes from the injected C{IReactorTime}: the allocation is
refreshed at C{refresh_fraction} of its lifetime, permissions every 4 of
their 5 minutes, channel bindings every 9 of their 10.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any, cast

import attrs
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
    IUDPTransport,
)
from twisted.internet.protocol import (
    AbstractDatagramProtocol,
    DatagramProtocol,
    Factory,
    Protocol,
    connectionDone,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_nat.address import format_address
from twisted_nat.errors import (
    ChannelDataDecodeError,
    ConfigurationError,
    STUNDecodeError,
    STUNErrorResponse,
    STUNTimeout,
    TransactionCancelled,
    TURNAllocationClosed,
    TURNAuthenticationError,
    TURNError,
    TURNNoPermission,
    TURNQuotaError,
    TURNUnavailable,
)
from twisted_nat.mux import CHANNEL_DATA_FIRST_BYTES, UDPMultiplexer
from twisted_nat.stun.attributes import (
    PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
    Attribute,
    Nonce,
    PasswordAlgorithm,
    PasswordAlgorithms,
    Realm,
    Software,
    Username,
    XorMappedAddress,
)
from twisted_nat.stun.client import SOFTWARE, Response, RetransmissionSchedule, STUNClient
from twisted_nat.stun.credentials import long_term_key
from twisted_nat.stun.message import (
    Message,
    MessageClass,
    Method,
    decode,
    encode,
    new_transaction_id,
    request,
    with_integrity,
)
from twisted_nat.turn.attributes import (
    TURN_ATTRIBUTES,
    ChannelNumber,
    Data,
    DontFragment,
    EvenPort,
    Lifetime,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    XorPeerAddress,
    XorRelayedAddress,
)
from twisted_nat.turn.channel import (
    CHANNEL_NUMBERS,
    StreamFramer,
    decode_channel_data,
    encode_channel_data,
    pad_for_stream,
)

Address = tuple[str, int]
Receiver = Callable[[bytes, Address], object]
"""Where relayed data goes: called with the data and the peer's address."""

TURN_METHODS = (Method.ALLOCATE, Method.REFRESH, Method.CREATE_PERMISSION, Method.CHANNEL_BIND)
"""The request methods whose answers the multiplexer must route to the TURN client's STUN client."""

PERMISSION_LIFETIME = 300.0
"""RFC 8656 9: a permission lasts 5 minutes unless refreshed."""
PERMISSION_REFRESH = 240.0
"""Refresh a permission a minute before it would expire."""
CHANNEL_LIFETIME = 600.0
"""RFC 8656 12: a channel binding lasts 10 minutes unless refreshed."""
CHANNEL_REFRESH = 540.0
"""Refresh a channel binding a minute before it would expire."""
DEFAULT_LIFETIME = 600
"""What RFC 8656 7.2 grants when LIFETIME is missing from a success response."""

STREAM_SCHEDULE = RetransmissionSchedule(rto=39.5, rc=1, rm=1)
"""
Over a reliable stream a request is sent once and answered within Ti =
39.5 s or never (RFC 8489 6.2.2): one transmission, the same overall wait
as the UDP schedule.
"""

NONCE_COOKIE = "obMatJos2"
"""RFC 8489 9.2: a NONCE starting so carries the server's security feature bits."""


@attrs.frozen
class Credentials:
    """
    What signs a request after the server's 401: the long-term key and the
    attributes that go with it.  A 438 replaces the nonce (L{with_nonce}).

    @ivar algorithms: the server's PASSWORD-ALGORITHMS, echoed back with our
        choice in PASSWORD-ALGORITHM, as RFC 8489 9.2.4 requires, so that a
        man in the middle cannot downgrade the algorithm unnoticed.
    @ivar sha256: also sign with MESSAGE-INTEGRITY-SHA256 (an RFC 8489
        server, recognised by its PASSWORD-ALGORITHMS).
    """

    username: str
    realm: str
    nonce: str
    key: bytes = attrs.field(repr=False)
    algorithms: PasswordAlgorithms | None = None
    algorithm: PasswordAlgorithm | None = None
    sha256: bool = False

    @classmethod
    def from_challenge(cls, challenge: Message, username: str, password: str) -> Credentials:
        """
        The credentials answering C{challenge}, a 401 error response.

        @raise TURNError: the 401 lacks REALM or NONCE, or offers only
            password algorithms we do not know.
        """
        realm, nonce = challenge.get(Realm), challenge.get(Nonce)
        if realm is None or nonce is None:
            raise TURNError(401, "401 without REALM and NONCE: not a long-term credential server")
        offered = challenge.get(PasswordAlgorithms)
        if offered is None or not nonce.value.startswith(NONCE_COOKIE):
            key = long_term_key(username, realm.value, password)
            return cls(username, realm.value, nonce.value, key)
        for number, parameters in offered.algorithms:
            if number in (PASSWORD_ALGORITHM_MD5, PASSWORD_ALGORITHM_SHA256):
                key = long_term_key(username, realm.value, password, algorithm=number)
                chosen = PasswordAlgorithm(number, parameters)
                return cls(username, realm.value, nonce.value, key, offered, chosen, sha256=True)
        raise TURNError(401, "the server offers no password algorithm we know")

    def with_nonce(self, stale: Message) -> Credentials | None:
        """These credentials with the nonce (and realm) of a 438 answer, or None without one."""
        nonce, realm = stale.get(Nonce), stale.get(Realm)
        if nonce is None:
            return None
        return attrs.evolve(
            self, nonce=nonce.value, realm=realm.value if realm is not None else self.realm
        )

    def sign(self, message: Message) -> Message:
        """
        C{message} with USERNAME, REALM, NONCE (and the password algorithms)
        and empty MESSAGE-INTEGRITY attributes, which L{encode} computes from
        the key.
        """
        extra: list[Attribute] = [Username(self.username), Realm(self.realm), Nonce(self.nonce)]
        if self.algorithms is not None and self.algorithm is not None:
            extra += [self.algorithms, self.algorithm]
        signed = attrs.evolve(message, attributes=message.attributes + tuple(extra))
        return with_integrity(signed, sha1=True, sha256=self.sha256)


@attrs.define
class TURNStats:
    """Counters; everything received and not delivered is counted here too."""

    allocations: int = 0
    refreshes: int = 0
    permissions: int = 0
    channel_binds: int = 0
    stale_nonces: int = 0
    stale_allocations: int = 0
    sent_indications: int = 0
    sent_channel_data: int = 0
    received_indications: int = 0
    received_channel_data: int = 0
    dropped_malformed: int = 0
    dropped_unknown_server: int = 0
    dropped_unknown_channel: int = 0


def turn_error(error: BaseException, server: Address | None) -> BaseException:
    """
    The TURN error a STUN transaction failure means.

    401 and 441 become L{TURNAuthenticationError}, 486 L{TURNQuotaError},
    any other code L{TURNError}; no answer, or a transaction abandoned
    because the client stopped, L{TURNUnavailable}.  Anything else (a local
    cancellation, a bug) passes unchanged.
    """
    if isinstance(error, STUNErrorResponse):
        kind: type[TURNError] = TURNError
        if error.code in (401, 441):
            kind = TURNAuthenticationError
        elif error.code == 486:
            kind = TURNQuotaError
        return kind(error.code, error.reason.rstrip("\x00"), server, error.response)
    if isinstance(error, STUNTimeout | TransactionCancelled):
        unavailable = TURNUnavailable(str(error), server)
        unavailable.__cause__ = error
        return unavailable
    return error


STALE_RELEASE_PAUSES = (0.25, 0.5, 1.0, 2.0)
"""Pauses before each Allocate after releasing a stale allocation (3.75 s in all)."""


@functools.lru_cache(maxsize=1024)
def _normal_host(host: str) -> str:
    """
    The canonical spelling of an IP literal, so that permissions and peers
    decoded from XOR-PEER-ADDRESS compare equal.  Cached: every relayed
    datagram asks, nearly always about the same few peers, and parsing the
    address was two thirds of the cost of sending one.

    @raise ConfigurationError: C{host} is not an IP address (TURN peers are
        addresses; resolve names first).
    """
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        raise ConfigurationError(f"TURN peer {host!r} is not an IP address") from None


def _normal_peer(peer: Address) -> Address:
    return (_normal_host(peer[0]), peer[1])


def _follow(source: Deferred[None]) -> Deferred[None]:
    """A Deferred firing when C{source} does, leaving C{source}'s result in place."""
    follower: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        follower.callback(None)
        return result

    source.addBoth(fire)
    return follower


class Allocation:
    """
    One allocation on a TURN server: a relayed address, its permissions and
    channels, and the timers that keep all of them alive.

    Made by L{TURNClient.allocate}, never directly.

    @ivar server: the TURN server's address.
    @ivar relayed_address: the address peers send to (XOR-RELAYED-ADDRESS).
    @ivar mapped_address: our address as the server saw it (XOR-MAPPED-ADDRESS).
    @ivar lifetime: the lifetime the server granted last, in seconds.
    @ivar expires_at: when the allocation ends unless refreshed, in the
        reactor's seconds.
    @ivar reservation_token: the RESERVATION-TOKEN of an EVEN-PORT
        reservation, if one was asked for.
    @ivar receiver: called with C{(data, peer)} for every relayed datagram.
    @ivar lost: fires, once, with the reason the allocation ended: a
        L{TURNError} (L{TURNUnavailable} when the server stopped answering
        a refresh) or L{TURNAllocationClosed} after L{close}.  It never
        fails, so nobody has to add an errback to it.
    """

    log = Logger()

    def __init__(
        self,
        client: TURNClient,
        server: Address,
        credentials: Credentials | None,
        response: Response,
        requested_lifetime: int | None,
        receiver: Receiver | None,
    ) -> None:
        message = response.message
        relayed = message.get(XorRelayedAddress)
        if relayed is None:
            raise TURNError(None, "Allocate success without XOR-RELAYED-ADDRESS", server, message)
        mapped = message.get(XorMappedAddress)
        token = message.get(ReservationToken)
        self.server = server
        self.relayed_address: Address = relayed.address
        self.mapped_address: Address | None = mapped.address if mapped is not None else None
        self.reservation_token = token.token if token is not None else None
        self.receiver = receiver
        self.lost: Deferred[TURNError] = Deferred()
        self.lifetime = 0
        self.expires_at = 0.0
        self._client = client
        self._reactor = client.reactor
        self._credentials = credentials
        self._requested_lifetime = requested_lifetime
        self._state = "active"
        self._refresh_timer: IDelayedCall | None = None
        self._permitted_hosts: set[str] = set()
        self._permission_timers: dict[str, IDelayedCall] = {}
        self._channels: dict[Address, int] = {}
        self._peers: dict[int, Address] = {}
        self._channel_timers: dict[Address, IDelayedCall] = {}
        self._binding: dict[Address, tuple[int, list[Deferred[int]]]] = {}
        self._retired: set[int] = set()
        self._granted(message)

    def __repr__(self) -> str:
        return (
            f"<Allocation {format_address(self.relayed_address)} on "
            f"{format_address(self.server)} ({self._state})>"
        )

    # --- state ---

    @property
    def active(self) -> bool:
        """True until the allocation is closed or lost."""
        return self._state == "active"

    @property
    def permissions(self) -> frozenset[str]:
        """The peer hosts we keep a permission for."""
        return frozenset(self._permitted_hosts)

    @property
    def channels(self) -> dict[Address, int]:
        """The bound channels, by peer."""
        return dict(self._channels)

    def _granted(self, message: Message) -> None:
        """Take the LIFETIME of a success response and plan the next refresh."""
        granted = message.get(Lifetime)
        self.lifetime = granted.seconds if granted is not None else DEFAULT_LIFETIME
        self.expires_at = self._reactor.seconds() + self.lifetime
        self._cancel(self._refresh_timer)
        delay = max(self.lifetime * self._client.refresh_fraction, 0.0)
        self._refresh_timer = self._reactor.callLater(delay, self._timed_refresh)

    def _cancel(self, timer: IDelayedCall | None) -> None:
        if timer is not None and timer.active():
            timer.cancel()

    def _cancel_all(self) -> None:
        self._cancel(self._refresh_timer)
        self._refresh_timer = None
        for timer in [*self._permission_timers.values(), *self._channel_timers.values()]:
            self._cancel(timer)
        self._permission_timers.clear()
        self._channel_timers.clear()
        self._permitted_hosts.clear()

    def _end(self, reason: TURNError) -> None:
        """Stop everything and fire L{lost} with C{reason} (once)."""
        if self._state == "ended":
            return
        self._state = "ended"
        self._cancel_all()
        self._client._forget(self)
        self.lost.callback(reason)

    def _lose(self, reason: TURNError) -> None:
        if self._state != "active":
            return  # ended already, or closing: the close ends it
        self.log.warn(
            "TURN allocation {relayed} on {server} lost: {reason}",
            relayed=format_address(self.relayed_address),
            server=format_address(self.server),
            reason=reason,
        )
        self._end(reason)

    def _check_active(self) -> None:
        if self._state != "active":
            raise TURNAllocationClosed(server=self.server)

    # --- requests ---

    def _request(self, method: int, attributes: Sequence[Attribute]) -> Deferred[Response]:
        """A signed request on this allocation; the nonce it ends with is kept."""
        return Deferred.fromCoroutine(self._signed_request(method, attributes))

    async def _signed_request(self, method: int, attributes: Sequence[Attribute]) -> Response:
        response, credentials = await self._client._signed(
            self.server, method, attributes, self._credentials
        )
        self._credentials = credentials
        return response

    def _fatal(self, error: BaseException) -> bool:
        """Whether C{error} from a refresh of any kind means the allocation is gone."""
        return isinstance(error, TURNUnavailable) or (
            isinstance(error, TURNError) and error.code == 437
        )

    def refresh(self) -> Deferred[int]:
        """
        Refresh the allocation now (the timer does it by itself).

        A refresh that fails means the server no longer keeps the
        allocation, or cannot be reached to keep it: the allocation is then
        lost (L{lost} fires with the same error).

        @return: a Deferred firing with the granted lifetime, in seconds.
        """
        try:
            self._check_active()
        except TURNError as e:
            return defer.fail(e)
        return Deferred.fromCoroutine(self._refresh())

    async def _refresh(self) -> int:
        attributes: list[Attribute] = []
        if self._requested_lifetime is not None:
            attributes.append(Lifetime(self._requested_lifetime))
        try:
            response = await self._request(Method.REFRESH, attributes)
        except CancelledError:
            raise
        except TURNError as e:
            self._lose(e)
            raise
        self._client.stats.refreshes += 1
        if self._state == "active":
            self._granted(response.message)
        self.log.debug(
            "TURN allocation {relayed} refreshed for {lifetime}s",
            relayed=format_address(self.relayed_address),
            lifetime=self.lifetime,
        )
        return self.lifetime

    def _timed_refresh(self) -> None:
        self._refresh_timer = None
        self.refresh().addErrback(lambda failure: None)  # already lost, and logged

    def create_permission(self, *hosts: str) -> Deferred[None]:
        """
        Let datagrams from C{hosts} (IP addresses; ports do not matter)
        through the relay, and allow sending to them; kept alive until the
        allocation ends.

        @return: a Deferred firing when the server installed the permissions,
            or failing with a L{TURNError} (403 if the server forbids a peer).
        """
        try:
            self._check_active()
            wanted = [_normal_host(host) for host in hosts]
        except (TURNError, ConfigurationError) as e:
            return defer.fail(e)
        if not wanted:
            return defer.fail(ValueError("create_permission needs at least one peer host"))
        return Deferred.fromCoroutine(self._create_permission(wanted))

    async def _create_permission(self, hosts: list[str]) -> None:
        await self._request(Method.CREATE_PERMISSION, [XorPeerAddress(host, 0) for host in hosts])
        self._client.stats.permissions += 1
        for host in hosts:
            self._permitted(host)

    def _permitted(self, host: str) -> None:
        """The server holds a permission for C{host} from now on: plan its refresh."""
        if self._state != "active":
            return
        self._permitted_hosts.add(host)
        self._cancel(self._permission_timers.get(host))
        self._permission_timers[host] = self._reactor.callLater(
            PERMISSION_REFRESH, self._refresh_permission, host
        )

    def _refresh_permission(self, host: str) -> None:
        self._permission_timers.pop(host, None)

        def refused(failure: Failure) -> None:
            self._permitted_hosts.discard(host)
            self._refresh_failed(failure, f"permission for {host}")

        self.create_permission(host).addErrback(refused)

    def _refresh_failed(self, failure: Failure, what: str) -> None:
        """
        A permission or channel could not be refreshed: without an answer
        (or with 437) the allocation is gone; any other refusal loses only
        that permission or channel, which the next send will show.
        """
        error = failure.value
        if isinstance(error, TURNError) and self._fatal(error):
            self._lose(error)
            return
        if isinstance(error, TURNAllocationClosed) or self._state != "active":
            return
        self.log.warn(
            "TURN {what} on {relayed} not refreshed: {error}",
            what=what,
            relayed=format_address(self.relayed_address),
            error=error,
        )

    def bind_channel(self, peer: Address) -> Deferred[int]:
        """
        Bind a channel to C{peer}, so that data to and from it travels as
        ChannelData (4 bytes of overhead instead of 36).  The binding also
        installs a permission for the peer's host, and both are kept alive
        until the allocation ends.

        @return: a Deferred firing with the channel number (0x4000-0x4FFF);
            the same number for a peer that has one already.
        """
        try:
            self._check_active()
            peer = _normal_peer(peer)
        except (TURNError, ConfigurationError) as e:
            return defer.fail(e)
        if peer in self._channels:
            return defer.succeed(self._channels[peer])
        waiter: Deferred[int] = Deferred()
        if peer in self._binding:  # one ChannelBind in flight serves every caller
            self._binding[peer][1].append(waiter)
            return waiter
        number = self._free_channel()
        if number is None:
            return defer.fail(TURNError(None, "no channel number left", self.server))
        self._binding[peer] = (number, [waiter])
        d = self._request(Method.CHANNEL_BIND, [ChannelNumber(number), XorPeerAddress(*peer)])
        d.addBoth(self._bound, peer, number)
        return waiter

    def _free_channel(self) -> int | None:
        """
        The lowest channel number neither bound, being bound, nor retired:
        RFC 8656 12 forbids giving a number to another peer for 5 minutes
        after its binding lapsed, and 4096 numbers are plenty never to.
        """
        taken = set(self._peers) | self._retired
        taken.update(number for number, _ in self._binding.values())
        for number in CHANNEL_NUMBERS:
            if number not in taken:
                return number
        return None

    def _bound(self, result: Response | Failure, peer: Address, number: int) -> None:
        """A ChannelBind was answered: install the channel and tell every waiter."""
        _, waiters = self._binding.pop(peer, (number, []))
        if not isinstance(result, Failure):
            self._client.stats.channel_binds += 1
            if self._state == "active":
                self._channels[peer] = number
                self._peers[number] = peer
                self._permitted(peer[0])
                self._cancel(self._channel_timers.get(peer))
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
        number = self._channels.get(peer)
        if number is None or self._state != "active":
            return
        d = self._request(Method.CHANNEL_BIND, [ChannelNumber(number), XorPeerAddress(*peer)])

        def rebound(response: Response) -> None:
            self._client.stats.channel_binds += 1
            if self._state == "active" and self._channels.get(peer) == number:
                self._permitted(peer[0])
                self._channel_timers[peer] = self._reactor.callLater(
                    CHANNEL_REFRESH, self._refresh_channel, peer
                )

        def unbound(failure: Failure) -> None:
            self._channels.pop(peer, None)
            self._peers.pop(number, None)
            self._retired.add(number)
            self._refresh_failed(failure, f"channel {number:#06x} to {format_address(peer)}")

        d.addCallbacks(rebound, unbound)

    # --- data ---

    def send(self, data: bytes, peer: Address, dont_fragment: bool = False) -> None:
        """
        Relay C{data} to C{peer}: as ChannelData on the peer's channel if it
        has one, otherwise in a Send indication.

        @param dont_fragment: ask the server to set DF towards the peer
            (Send indications only; a channel has no room to say so).
        @raise TURNAllocationClosed: the allocation is closed or lost.
        @raise TURNNoPermission: no permission (nor channel) for C{peer}'s
            host: the server would drop the data without a word.
        """
        self._check_active()
        number = self._channels.get(peer)
        if number is None:
            peer = _normal_peer(peer)
            number = self._channels.get(peer)
        if number is not None:
            self._client.stats.sent_channel_data += 1
            self._client._write(encode_channel_data(number, data), self.server)
            return
        if peer[0] not in self._permitted_hosts:
            raise TURNNoPermission(peer, self.server)
        attributes: list[Attribute] = [XorPeerAddress(*peer), Data(data)]
        if dont_fragment:
            attributes.append(DontFragment())
        indication = Message(
            Method.SEND, MessageClass.INDICATION, new_transaction_id(), tuple(attributes)
        )
        self._client.stats.sent_indications += 1
        self._client._write(encode(indication), self.server)

    def _deliver(self, data: bytes, peer: Address) -> None:
        if self.receiver is None or self._state == "ended":
            return
        try:
            self.receiver(data, peer)
        except Exception:
            self.log.failure(
                "TURN receiver failed on {size} bytes from {peer}",
                size=len(data),
                peer=format_address(peer),
            )

    def _channel_data(self, number: int, data: bytes) -> None:
        peer = self._peers.get(number)
        if peer is None:
            self._client.stats.dropped_unknown_channel += 1
            self.log.debug("dropped ChannelData on unbound channel {number:#06x}", number=number)
            return
        self._client.stats.received_channel_data += 1
        self._deliver(data, peer)

    def attach(self, protocol: AbstractDatagramProtocol) -> RelayedTransport:
        """
        Give C{protocol} the relay as its transport: what it writes goes to
        peers through the relay, and what peers send arrives in its
        C{datagramReceived}, with the peer's address.
        """
        transport = RelayedTransport(self, protocol)
        self.receiver = protocol.datagramReceived
        protocol.makeConnection(transport)
        return transport

    # --- the end ---

    def close(self) -> Deferred[None]:
        """
        Deallocate: stop every timer and send a Refresh with LIFETIME 0.

        The allocation is unusable at once.  The Deferred fires once the
        server answered, or did not (the failure is logged: the allocation
        expires on the server anyway); then L{lost} fires with
        L{TURNAllocationClosed}.
        """
        if self._state != "active":
            return defer.succeed(None)
        self._state = "closing"
        self._cancel_all()
        return Deferred.fromCoroutine(self._deallocate())

    async def _deallocate(self) -> None:
        try:
            await self._request(Method.REFRESH, [Lifetime(0)])
        except Exception as e:
            if not (isinstance(e, TURNError) and e.code == 437):  # 437: already gone
                self.log.info(
                    "TURN deallocation of {relayed} unconfirmed: {error}",
                    relayed=format_address(self.relayed_address),
                    error=e,
                )
        else:
            self.log.info(
                "TURN allocation {relayed} on {server} released",
                relayed=format_address(self.relayed_address),
                server=format_address(self.server),
            )
        self._end(TURNAllocationClosed(server=self.server))


@implementer(IUDPTransport)
class RelayedTransport:
    """
    The transport of a protocol that uses a relayed address as its socket
    (L{Allocation.attach}): writes become L{Allocation.send}, C{getHost} is
    the relayed address, closing it closes the allocation.
    """

    def __init__(self, allocation: Allocation, protocol: AbstractDatagramProtocol) -> None:
        self.allocation = allocation
        self._protocol = protocol
        self._stopped: Deferred[None] | None = None

    def write(self, packet: bytes, addr: Address | None = None) -> None:
        if addr is None:
            raise ValueError("a relayed transport needs a destination for every datagram")
        self.allocation.send(packet, addr)

    def connect(self, host: str, port: int) -> None:
        raise RuntimeError("a relayed transport cannot be connected to one peer")

    def getHost(self) -> IPv4Address | IPv6Address:
        host, port = self.allocation.relayed_address
        if ":" in host:
            return IPv6Address("UDP", host, port)
        return IPv4Address("UDP", host, port)

    def stopListening(self) -> Deferred[None]:
        if self._stopped is None:
            self._stopped = self.allocation.close()
            self._protocol.doStop()
        return _follow(self._stopped)

    loseConnection = stopListening

    def setBroadcastAllowed(self, enabled: bool) -> None:
        if enabled:
            raise RuntimeError("a relay does not broadcast")

    def getBroadcastAllowed(self) -> bool:
        return False


class TURNClient(DatagramProtocol):
    """
    The TURN client of one socket (or one stream): makes allocations and
    receives what their relays forward.

    Build it with L{on_multiplexer} for the shared UDP socket, or with
    L{connect_stream} for TCP or TLS.  It holds at most one allocation per
    server, since RFC 8656 binds an allocation to the 5-tuple.

    @param stun: the STUN client that runs the TURN requests; the
        multiplexer must route it the answers of L{TURN_METHODS}.
    @param reactor: the clock of every timer; a C{task.Clock} in tests.
    @param refresh_fraction: refresh an allocation when this fraction of
        its lifetime has passed.
    @param schedule: the retransmission schedule of every TURN request
        (the STUN client's own when None).
    @param software: the SOFTWARE attribute of our requests, or None.
    @ivar server: the stream's TURN server, for a client made by
        L{connect_stream}; None on UDP, where each allocation names its own.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        stun: STUNClient,
        reactor: IReactorTime | None = None,
        refresh_fraction: float = 0.8,
        schedule: RetransmissionSchedule | None = None,
        software: str | None = SOFTWARE,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = cast(IReactorTime, global_reactor)
        if not 0 < refresh_fraction < 1:
            raise ConfigurationError("refresh_fraction must lie between 0 and 1")
        self.reactor: IReactorTime = reactor
        self.refresh_fraction = refresh_fraction
        self.schedule = schedule
        self.software = software
        self.stats = TURNStats()
        self.server: Address | None = None
        self._stun = stun
        self._allocations: dict[Address, Allocation] = {}
        self._allocating: set[Address] = set()
        self._on_close: Callable[[], object] | None = None
        self._gone: TURNError | None = None

    @classmethod
    def on_multiplexer(
        cls,
        mux: UDPMultiplexer,
        reactor: IReactorTime | None = None,
        stun: STUNClient | None = None,
        **kwargs: Any,
    ) -> TURNClient:
        """
        A TURN client on C{mux}'s socket.

        C{stun} (a new L{STUNClient} if None; it may be the one that does
        Binding requests already) gets the answers to TURN's four request
        methods; the TURN client gets Data indications and ChannelData.
        Other keywords go to the constructor.
        """
        if stun is None:
            stun = STUNClient(reactor=reactor)
        mux.add_stun(stun, TURN_METHODS, [MessageClass.SUCCESS, MessageClass.ERROR])
        client = cls(stun, reactor, **kwargs)
        mux.add_stun(client, [Method.DATA], [MessageClass.INDICATION])
        mux.add_range(client, CHANNEL_DATA_FIRST_BYTES)
        return client

    @property
    def allocations(self) -> dict[Address, Allocation]:
        """The live allocations, by server."""
        return dict(self._allocations)

    # --- allocating ---

    def allocate(
        self,
        server: Address | None,
        username: str,
        password: str,
        *,
        lifetime: int | None = None,
        receiver: Receiver | None = None,
        even_port: bool | None = None,
        reservation_token: bytes | None = None,
        family: int | None = None,
    ) -> Deferred[Allocation]:
        """
        Allocate a relayed address on C{server}, with the long-term
        credential C{username} / C{password}.

        @param server: the TURN server; None for a stream client's own.
        @param lifetime: the lifetime to ask for (and to ask again at each
            refresh); the server's default (usually 600 s) when None.
        @param receiver: where relayed data goes (also settable later).
        @param even_port: ask for an even relayed port; C{True} also
            reserves the next one (EVEN-PORT with R set).
        @param reservation_token: take the port another allocation reserved.
        @param family: REQUESTED-ADDRESS-FAMILY (1 IPv4, 2 IPv6).
        @return: a Deferred firing with the L{Allocation}, or failing with
            L{TURNAuthenticationError} (wrong credentials),
            L{TURNQuotaError} (486), L{TURNUnavailable} (no answer) or
            L{TURNError} (any other error code).
        """
        attributes: list[Attribute] = [RequestedTransport()]
        if lifetime is not None:
            attributes.append(Lifetime(lifetime))
        if even_port is not None:
            attributes.append(EvenPort(reserve=even_port))
        if reservation_token is not None:
            attributes.append(ReservationToken(reservation_token))
        if family is not None:
            attributes.append(RequestedAddressFamily(family))
        return Deferred.fromCoroutine(
            self._allocate(server, username, password, attributes, lifetime, receiver)
        )

    async def _allocate(
        self,
        server: Address | None,
        username: str,
        password: str,
        attributes: list[Attribute],
        lifetime: int | None,
        receiver: Receiver | None,
    ) -> Allocation:
        server = await self._server_address(server)
        if server in self._allocations or server in self._allocating:
            raise TURNError(None, "this socket has an allocation on the server already", server)
        self._allocating.add(server)
        try:
            try:
                response, credentials = await self._allocate_once(
                    server, username, password, attributes
                )
            except TURNError as e:
                if e.code != 437:
                    raise
                await self._release_stale(server, username, password)
                response, credentials = await self._allocate_after_release(
                    server, username, password, attributes
                )
            allocation = Allocation(self, server, credentials, response, lifetime, receiver)
        finally:
            self._allocating.discard(server)
        self._allocations[server] = allocation
        self.stats.allocations += 1
        self.log.info(
            "TURN allocation {relayed} on {server} for {lifetime}s",
            relayed=format_address(allocation.relayed_address),
            server=format_address(server),
            lifetime=allocation.lifetime,
        )
        return allocation

    async def _allocate_once(
        self, server: Address, username: str, password: str, attributes: list[Attribute]
    ) -> tuple[Response, Credentials | None]:
        """An Allocate, and again with the credential if the server asks for one (401)."""
        try:
            response = await self._stun.request(
                request(Method.ALLOCATE, [*attributes, *self._software()]),
                server,
                schedule=self.schedule,
                table=TURN_ATTRIBUTES,
            )
        except STUNErrorResponse as e:
            if e.code != 401:
                raise self._error(e, server) from e
            credentials = Credentials.from_challenge(cast(Message, e.response), username, password)
            return await self._signed(server, Method.ALLOCATE, attributes, credentials)
        except (STUNTimeout, TransactionCancelled) as e:
            raise self._error(e, server) from e
        return response, None

    async def _allocate_after_release(
        self, server: Address, username: str, password: str, attributes: list[Attribute]
    ) -> tuple[Response, Credentials | None]:
        """
        Allocate again once the stale allocation is released: coturn keeps
        the released allocation's session for about a second and answers
        437 until then, so the attempts come after growing pauses.
        """
        for pause in STALE_RELEASE_PAUSES:
            await task.deferLater(self.reactor, pause, lambda: None)
            try:
                return await self._allocate_once(server, username, password, attributes)
            except TURNError as e:
                if e.code != 437 or pause == STALE_RELEASE_PAUSES[-1]:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _release_stale(self, server: Address, username: str, password: str) -> None:
        """
        After a 437 (allocation mismatch) to a fresh Allocate: the server
        still holds an allocation for this very socket address, an earlier
        run's whose deallocation never arrived (an application restarted on
        its port; a NAT that handed out the same public port again).  It is
        ours to release, under the same credential: a Refresh with LIFETIME
        0 (unsigned first, for the realm and nonce its 401 brings).  Should
        the release fail, the next Allocate says why.
        """
        self.log.info("{server} holds a stale allocation for us: releasing it", server=server)
        self.stats.stale_allocations += 1
        credentials: Credentials | None = None
        try:
            await self._stun.request(
                request(Method.REFRESH, [Lifetime(0), *self._software()]),
                server,
                schedule=self.schedule,
                table=TURN_ATTRIBUTES,
            )
            return
        except STUNErrorResponse as e:
            if e.code != 401:
                self.log.debug("releasing the stale allocation: {error}", error=e)
                return
            credentials = Credentials.from_challenge(cast(Message, e.response), username, password)
        except (STUNTimeout, TransactionCancelled) as e:
            self.log.debug("releasing the stale allocation: {error}", error=e)
            return
        try:
            await self._signed(server, Method.REFRESH, [Lifetime(0)], credentials)
        except TURNError as e:
            self.log.debug("releasing the stale allocation: {error}", error=e)

    async def _server_address(self, server: Address | None) -> Address:
        if self.server is not None:
            if server is not None and await self._stun.resolve(server) != self.server:
                raise ConfigurationError(f"this client talks to {format_address(self.server)} only")
            return self.server
        if server is None:
            raise ConfigurationError("a TURN client on UDP needs the server's address")
        return await self._stun.resolve(server)

    def _software(self) -> list[Attribute]:
        return [Software(self.software)] if self.software else []

    async def _signed(
        self,
        server: Address,
        method: int,
        attributes: Sequence[Attribute],
        credentials: Credentials | None,
    ) -> tuple[Response, Credentials | None]:
        """
        Send a request signed with C{credentials} (unsigned without: a
        server that did not ask for any), retrying once with the fresh nonce
        of a 438.

        @return: the response and the credentials it was signed with.
        @raise TURNError: as L{turn_error} maps the failure.
        """
        for attempt in (1, 2):
            message = request(method, [*attributes, *self._software()])
            key = None
            if credentials is not None:
                message, key = credentials.sign(message), credentials.key
            try:
                response = await self._stun.request(
                    message, server, key=key, schedule=self.schedule, table=TURN_ATTRIBUTES
                )
            except STUNErrorResponse as e:
                if e.code == 438 and attempt == 1 and credentials is not None:
                    fresh = credentials.with_nonce(cast(Message, e.response))
                    if fresh is not None:
                        self.stats.stale_nonces += 1
                        self.log.debug("stale nonce from {server}: retrying", server=server)
                        credentials = fresh
                        continue
                raise self._error(e, server) from e
            except (STUNTimeout, TransactionCancelled) as e:
                raise self._error(e, server) from e
            return response, credentials
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _error(self, error: BaseException, server: Address) -> BaseException:
        """
        L{turn_error}, except that a transaction abandoned because the
        socket or stream went away says why it went away.
        """
        if isinstance(error, TransactionCancelled) and self._gone is not None:
            unavailable = TURNUnavailable(self._gone.reason, server)
            unavailable.__cause__ = error
            return unavailable
        return turn_error(error, server)

    def _forget(self, allocation: Allocation) -> None:
        if self._allocations.get(allocation.server) is allocation:
            del self._allocations[allocation.server]

    def _write(self, data: bytes, server: Address) -> None:
        if self.transport is None:
            raise TURNUnavailable("the TURN client is not listening", server)
        self.transport.write(data, server)

    # --- receiving ---

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        allocation = self._allocations.get(addr)
        if allocation is None:
            self.stats.dropped_unknown_server += 1
            self.log.debug("dropped TURN data from {addr}: no allocation there", addr=addr)
            return
        if datagram[:1] and 0x40 <= datagram[0] <= 0x4F:
            try:
                channel_data = decode_channel_data(datagram)
            except ChannelDataDecodeError as e:
                self._malformed(addr, e)
                return
            allocation._channel_data(channel_data.channel, channel_data.data)
            return
        try:
            message = decode(datagram, table=TURN_ATTRIBUTES)
        except STUNDecodeError as e:
            self._malformed(addr, e)
            return
        peer, data = message.get(XorPeerAddress), message.get(Data)
        if (
            message.method != Method.DATA
            or message.message_class != MessageClass.INDICATION
            or peer is None
            or data is None
        ):
            self._malformed(addr, ValueError("not a Data indication with peer and data"))
            return
        self.stats.received_indications += 1
        allocation._deliver(data.value, peer.address)

    def _malformed(self, addr: Address, error: Exception) -> None:
        self.stats.dropped_malformed += 1
        self.log.debug("dropped malformed TURN data from {addr}: {error}", addr=addr, error=error)

    # --- the end ---

    def close(self) -> Deferred[None]:
        """Close every allocation (and a stream client's connection) and wait for that."""
        closing = [allocation.close() for allocation in list(self._allocations.values())]
        done: Deferred[Any] = defer.gatherResults(closing, consumeErrors=True)

        def closed(result: object) -> None:
            if self._on_close is not None:
                self._on_close()

        return done.addBoth(closed)

    def lose_all(self, reason: TURNError) -> None:
        """Every allocation is lost for C{reason} (the client's socket or stream is gone)."""
        if self._gone is None:
            self._gone = reason
        for allocation in list(self._allocations.values()):
            allocation._lose(reason)

    def doStop(self) -> None:
        self.lose_all(TURNUnavailable("the TURN client stopped", self.server))
        super().doStop()


# --- streams: TCP and TLS ---------------------------------------------------------


@implementer(IUDPTransport)
class _StreamDatagrams:
    """
    The datagram face of a stream, for the multiplexer that runs over it:
    every message written goes onto the stream, ChannelData padded.
    """

    def __init__(self, stream: ITransport, peer: Address) -> None:
        self._stream = stream
        self._peer = peer

    def write(self, packet: bytes, addr: Address | None = None) -> None:
        if addr is not None and addr != self._peer:
            raise ValueError(f"a stream to {format_address(self._peer)} cannot reach {addr}")
        self._stream.write(pad_for_stream(packet))

    def connect(self, host: str, port: int) -> None:
        raise RuntimeError("a stream is connected already")

    def getHost(self) -> IPv4Address | IPv6Address:
        return cast(IPv4Address | IPv6Address, self._stream.getHost())

    def stopListening(self) -> None:
        self._stream.loseConnection()

    def setBroadcastAllowed(self, enabled: bool) -> None:
        raise RuntimeError("a stream does not broadcast")

    def getBroadcastAllowed(self) -> bool:
        return False


class TURNStreamProtocol(Protocol):
    """
    TURN over one TCP or TLS connection: cuts the stream into messages and
    hands them to a private multiplexer, on which a L{STUNClient} (without
    retransmissions) and a L{TURNClient} sit exactly as on a UDP socket.

    @ivar client: the TURN client, once connected.
    """

    log = Logger()

    def __init__(self, reactor: IReactorTime, **client_options: Any) -> None:
        self._reactor = reactor
        self._options = client_options
        self._framer = StreamFramer()
        self._mux = UDPMultiplexer()
        self.client: TURNClient | None = None
        self.server: Address | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        peer = self.transport.getPeer()
        self.server = (peer.host, peer.port)  # type: ignore[attr-defined]
        self._mux.makeConnection(_StreamDatagrams(self.transport, self.server))
        stun = STUNClient(reactor=self._reactor, schedule=STREAM_SCHEDULE)
        self.client = TURNClient.on_multiplexer(self._mux, self._reactor, stun, **self._options)
        self.client.server = self.server
        self.client._on_close = self.transport.loseConnection

    def dataReceived(self, data: bytes) -> None:
        assert self.server is not None
        try:
            frames = self._framer.feed(data)
        except ChannelDataDecodeError as e:
            self.log.warn(
                "TURN stream from {server} unreadable, closing: {error}",
                server=format_address(self.server),
                error=e,
            )
            assert self.transport is not None
            self.transport.loseConnection()
            return
        for frame in frames:
            self._mux.datagramReceived(frame, self.server)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.client is not None:
            self.client.lose_all(
                TURNUnavailable(f"the stream was closed: {reason.getErrorMessage()}", self.server)
            )
        if self._mux.transport is not None:
            self._mux.doStop()


class _StreamFactory(Factory):
    """Builds the one L{TURNStreamProtocol} of a L{connect_stream} call."""

    def __init__(self, reactor: IReactorTime, options: dict[str, Any]) -> None:
        self._reactor = reactor
        self._options = options

    def buildProtocol(self, addr: object) -> TURNStreamProtocol:
        return TURNStreamProtocol(self._reactor, **self._options)


def connect_stream(
    reactor: Any,
    endpoint: str | IStreamClientEndpoint,
    **client_options: Any,
) -> Deferred[TURNClient]:
    """
    Connect to a TURN server over a stream and return its client.

    @param reactor: the reactor (it must provide the endpoint's transport
        as well as time).
    @param endpoint: a client endpoint or its string description, e.g.
        C{tcp:host=turn.example.com:port=3478} or
        C{tls:turn.example.com:5349}.
    @param client_options: keywords for L{TURNClient} (C{refresh_fraction},
        C{software}).
    @return: a Deferred firing with a L{TURNClient} whose L{allocate} takes
        None as the server; or failing with L{TURNUnavailable} when the
        connection cannot be made, or L{ConfigurationError} for a bad
        endpoint description.
    """
    if isinstance(endpoint, str):
        try:
            parsed: IStreamClientEndpoint = clientFromString(reactor, endpoint)
        except (ValueError, KeyError, TypeError) as e:
            return defer.fail(ConfigurationError(f"bad TURN endpoint {endpoint!r}: {e}"))
    else:
        parsed = endpoint
    d: Deferred[Any] = parsed.connect(_StreamFactory(reactor, client_options))

    def connected(protocol: TURNStreamProtocol) -> TURNClient:
        assert protocol.client is not None
        return protocol.client

    def failed(failure: Failure) -> Failure:
        if failure.check(CancelledError):
            return failure
        error = TURNUnavailable(f"cannot connect: {failure.getErrorMessage()}")
        error.__cause__ = failure.value
        return Failure(error)

    return d.addCallbacks(connected, failed)
