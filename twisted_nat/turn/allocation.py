"""
One allocation on a TURN server (RFC 8656): its relayed address, the
requests and timers that keep it, its permissions and its channels alive,
and the data it relays.

The allocation is made by a L{twisted_nat.turn.client.TURNClient} and
reaches it only through a L{ClientLink}: the client's requests, its socket
or stream, its clock.  What the answers established is recorded in an
L{AllocationBook}; a L{PeerAccess} keeps the permissions and channels.
All time comes from the link's C{IReactorTime}: the allocation is
refreshed at C{refresh_fraction} of its lifetime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.logger import Logger

from twisted_nat.address import Address, format_address
from twisted_nat.errors import TURNAllocationClosed, TURNError
from twisted_nat.stun.attributes import Attribute, XorMappedAddress
from twisted_nat.stun.client import Response
from twisted_nat.stun.message import Message, MessageClass, Method, encode, new_transaction_id
from twisted_nat.turn.attributes import (
    Data,
    DontFragment,
    Lifetime,
    ReservationToken,
    XorPeerAddress,
    XorRelayedAddress,
)
from twisted_nat.turn.bookkeeping import AllocationBook, AllocationState
from twisted_nat.turn.channel import encode_channel_data
from twisted_nat.turn.credentials import Credentials
from twisted_nat.turn.peers import PeerAccess, cancel_timer
from twisted_nat.turn.relayed import RelayedTransport
from twisted_nat.turn.stats import TURNStats
from twisted_nat.turn.transactions import TURNTransactions

Receiver = Callable[[bytes, Address], object]
"""Where relayed data goes: called with the data and the peer's address."""

DEFAULT_LIFETIME = 600
"""What RFC 8656 7.2 grants when LIFETIME is missing from a success response."""


@attrs.frozen
class ClientLink:
    """
    What an allocation needs of the TURN client that made it.

    @ivar reactor: the clock of the allocation's timers.
    @ivar transactions: runs the allocation's signed requests.
    @ivar stats: the client's counters.
    @ivar refresh_fraction: refresh when this fraction of the lifetime passed.
    @ivar write: sends a datagram to the TURN server on the client's socket
        or stream.
    @ivar forget: called with the allocation once it ended.
    """

    reactor: IReactorTime
    transactions: TURNTransactions
    stats: TURNStats
    refresh_fraction: float
    write: Callable[[bytes, Address], None]
    forget: Callable[[Allocation], None]


class Allocation:
    """
    One allocation on a TURN server: a relayed address, its permissions and
    channels, and the timers that keep all of them alive.

    Made by L{TURNClient.allocate<twisted_nat.turn.client.TURNClient.allocate>},
    never directly.

    @ivar server: the TURN server's address.
    @ivar relayed_address: the address peers send to (XOR-RELAYED-ADDRESS).
    @ivar mapped_address: our address as the server saw it (XOR-MAPPED-ADDRESS).
    @ivar reservation_token: the RESERVATION-TOKEN of an EVEN-PORT
        reservation, if one was asked for.
    @ivar receiver: called with C{(data, peer)} for every relayed datagram.
    @ivar lost: fires, once, with the reason the allocation ended: a
        L{TURNError} (L{TURNUnavailable<twisted_nat.errors.TURNUnavailable>}
        when the server stopped answering a refresh) or
        L{TURNAllocationClosed} after L{close}.  It never fails, so nobody
        has to add an errback to it.
    """

    log = Logger()

    def __init__(
        self,
        link: ClientLink,
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
        self._link = link
        self._stats = link.stats
        self._write = link.write
        self._credentials = credentials
        self._requested_lifetime = requested_lifetime
        self._book = AllocationBook(server)
        self._refresh_timer: IDelayedCall | None = None
        self._access = PeerAccess(
            self._book, link.reactor, link.stats, self._request, self.lose, self.relayed_address
        )
        self._granted(message)

    def __repr__(self) -> str:
        return (
            f"<Allocation {format_address(self.relayed_address)} on "
            f"{format_address(self.server)} ({self._book.state.value})>"
        )

    # --- state ---

    @property
    def state(self) -> AllocationState:
        """Where the allocation is in its life."""
        return self._book.state

    @property
    def active(self) -> bool:
        """True until the allocation is closed or lost."""
        return self._book.state is AllocationState.ACTIVE

    @property
    def lifetime(self) -> int:
        """The lifetime the server granted last, in seconds."""
        return self._book.lifetime

    @property
    def expires_at(self) -> float:
        """When the allocation ends unless refreshed, in the reactor's seconds."""
        return self._book.expires_at

    @property
    def permissions(self) -> frozenset[str]:
        """The peer hosts we keep a permission for."""
        return frozenset(self._book.permitted)

    @property
    def channels(self) -> dict[Address, int]:
        """The bound channels, by peer."""
        return dict(self._book.channels)

    def _granted(self, message: Message) -> None:
        """Take the LIFETIME of a success response and plan the next refresh."""
        granted = message.get(Lifetime)
        reactor = self._link.reactor
        delay = self._book.grant(
            granted.seconds if granted is not None else DEFAULT_LIFETIME,
            reactor.seconds(),
            self._link.refresh_fraction,
        )
        cancel_timer(self._refresh_timer)
        self._refresh_timer = reactor.callLater(delay, self._timed_refresh)

    def _cancel_all(self) -> None:
        cancel_timer(self._refresh_timer)
        self._refresh_timer = None
        self._access.cancel()

    def _end(self, reason: TURNError) -> None:
        """Stop everything and fire L{lost} with C{reason} (once)."""
        if not self._book.end():
            return
        self._cancel_all()
        self._link.forget(self)
        self.lost.callback(reason)

    def lose(self, reason: TURNError) -> None:
        """
        The allocation is gone for C{reason} (its socket or stream went
        away, or the server stopped keeping it): stop every timer and fire
        L{lost}.  Nothing is sent.  No effect once closing or ended.
        """
        if self._book.state is not AllocationState.ACTIVE:
            return  # ended already, or closing: the close ends it
        self.log.warn(
            "TURN allocation {relayed} on {server} lost: {reason}",
            relayed=format_address(self.relayed_address),
            server=format_address(self.server),
            reason=reason,
        )
        self._end(reason)

    # --- requests ---

    def _request(self, method: int, attributes: Sequence[Attribute]) -> Deferred[Response]:
        """A signed request on this allocation; the nonce it ends with is kept."""
        return Deferred.fromCoroutine(self._signed_request(method, attributes))

    async def _signed_request(self, method: int, attributes: Sequence[Attribute]) -> Response:
        response, credentials = await self._link.transactions.signed(
            self.server, method, attributes, self._credentials
        )
        self._credentials = credentials
        return response

    def refresh(self) -> Deferred[int]:
        """
        Refresh the allocation now (the timer does it by itself).

        A refresh that fails means the server no longer keeps the
        allocation, or cannot be reached to keep it: the allocation is then
        lost (L{lost} fires with the same error).

        @return: a Deferred firing with the granted lifetime, in seconds.
        """
        try:
            self._book.check_active()
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
            self.lose(e)
            raise
        self._stats.refreshes += 1
        if self._book.active:
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
        return self._access.create_permission(*hosts)

    def bind_channel(self, peer: Address) -> Deferred[int]:
        """
        Bind a channel to C{peer}, so that data to and from it travels as
        ChannelData (4 bytes of overhead instead of 36).  The binding also
        installs a permission for the peer's host, and both are kept alive
        until the allocation ends.

        @return: a Deferred firing with the channel number (0x4000-0x4FFF);
            the same number for a peer that has one already.
        """
        return self._access.bind_channel(peer)

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
        book = self._book
        if book.state is not AllocationState.ACTIVE:
            raise TURNAllocationClosed(server=self.server)
        number = book.channels.get(peer)
        if number is None:
            peer, number = book.route(peer)
        if number is not None:
            self._stats.sent_channel_data += 1
            self._write(encode_channel_data(number, data), self.server)
            return
        attributes: list[Attribute] = [XorPeerAddress(*peer), Data(data)]
        if dont_fragment:
            attributes.append(DontFragment())
        indication = Message(
            Method.SEND, MessageClass.INDICATION, new_transaction_id(), tuple(attributes)
        )
        self._stats.sent_indications += 1
        self._write(encode(indication), self.server)

    def data_received(self, data: bytes, peer: Address) -> None:
        """
        The relay forwarded C{data} from C{peer} (a Data indication, or
        ChannelData the client resolved with L{channel_data_received}):
        hand it to the L{receiver}.
        """
        if self.receiver is None or self._book.state is AllocationState.ENDED:
            return
        try:
            self.receiver(data, peer)
        except Exception:
            self.log.failure(
                "TURN receiver failed on {size} bytes from {peer}",
                size=len(data),
                peer=format_address(peer),
            )

    def channel_data_received(self, number: int, data: bytes) -> None:
        """The relay forwarded C{data} on channel C{number}; dropped if it is not bound."""
        peer = self._book.peers.get(number)
        if peer is None:
            self._stats.dropped_unknown_channel += 1
            self.log.debug("dropped ChannelData on unbound channel {number:#06x}", number=number)
            return
        self._stats.received_channel_data += 1
        self.data_received(data, peer)

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
        if not self._book.close():
            return defer.succeed(None)
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
