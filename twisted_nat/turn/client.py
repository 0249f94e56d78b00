"""
The TURN client (RFC 8656) of one socket or stream: it makes allocations
and receives what their relays forward.

A relay is what is left when hole punching fails (a symmetric NAT on both
sides, a firewall that only lets UDP out to a few servers): the TURN server
lends us a public address, the I{relayed address}, and forwards between it
and our socket.  The allocation only helps if it belongs to the socket that
everything else uses, so on UDP the client lives on the multiplexer like
every other protocol (see C{docs/architecture.md}):

  - its requests (Allocate, Refresh, CreatePermission, ChannelBind) are
    transactions of a L{STUNClient} to which the multiplexer routes the
    answers of those four methods (L{TURNTransactions});
  - the L{TURNClient} itself gets Data indications (method DATA, class
    INDICATION) and ChannelData (first byte 64-79), and hands them to the
    L{Allocation} of the server they came from.

Over a stream (L{twisted_nat.turn.stream.connect_stream}) the same pieces
run on a private multiplexer, so this module cannot tell the difference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from twisted_nat.address import Address, format_address
from twisted_nat.errors import (
    ChannelDataDecodeError,
    ConfigurationError,
    STUNDecodeError,
    TURNError,
    TURNUnavailable,
)
from twisted_nat.mux import CHANNEL_DATA_FIRST_BYTES, UDPMultiplexer
from twisted_nat.stun.attributes import Attribute
from twisted_nat.stun.client import SOFTWARE, RetransmissionSchedule, STUNClient
from twisted_nat.stun.message import MessageClass, Method, decode
from twisted_nat.turn.allocation import Allocation, ClientLink, Receiver
from twisted_nat.turn.attributes import (
    TURN_ATTRIBUTES,
    Data,
    EvenPort,
    Lifetime,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    XorPeerAddress,
)
from twisted_nat.turn.channel import decode_channel_data
from twisted_nat.turn.stats import TURNStats
from twisted_nat.turn.transactions import TURN_METHODS, TURNTransactions


class TURNClient(DatagramProtocol):
    """
    The TURN client of one socket (or one stream): makes allocations and
    receives what their relays forward.

    Build it with L{on_multiplexer} for the shared UDP socket, or with
    L{connect_stream<twisted_nat.turn.stream.connect_stream>} for TCP or
    TLS.  It holds at most one allocation per server, since RFC 8656 binds
    an allocation to the 5-tuple.

    @param stun: the STUN client that runs the TURN requests; the
        multiplexer must route it the answers of L{TURN_METHODS}.
    @param reactor: the clock of every timer; the global reactor when None
        (a C{task.Clock} in tests).
    @param refresh_fraction: refresh an allocation when this fraction of
        its lifetime has passed.
    @param schedule: the retransmission schedule of every TURN request
        (the STUN client's own when None).
    @param software: the SOFTWARE attribute of our requests, or None.
    @param server: the one TURN server of a stream client; None on UDP,
        where each allocation names its own.
    @param on_close: called when L{close} is done (a stream client closes
        its connection then).
    @ivar server: as the parameter.
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
        *,
        server: Address | None = None,
        on_close: Callable[[], object] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = cast(IReactorTime, global_reactor)
        if not 0 < refresh_fraction < 1:
            raise ConfigurationError("refresh_fraction must lie between 0 and 1")
        self.reactor: IReactorTime = reactor
        self.refresh_fraction = refresh_fraction
        self.stats = TURNStats()
        self.server = server
        self._transactions = TURNTransactions(stun, reactor, self.stats, schedule, software)
        self._link = ClientLink(
            reactor, self._transactions, self.stats, refresh_fraction, self._write, self._forget
        )
        self._allocations: dict[Address, Allocation] = {}
        self._allocating: set[Address] = set()
        self._on_close = on_close

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
        C{reactor} is the clock of both (the global reactor when None).
        Other keywords go to the constructor.
        """
        if stun is None:
            stun = STUNClient(reactor=reactor)
        mux.add_stun(stun, TURN_METHODS, [MessageClass.SUCCESS, MessageClass.ERROR])
        client = cls(stun, reactor, **kwargs)
        mux.add_stun(client, [Method.DATA], [MessageClass.INDICATION])
        # ChannelData shares its first bytes with QUIC: only what comes
        # from a TURN server is ChannelData (RFC 9443 section 3).
        mux.add_range(client, CHANNEL_DATA_FIRST_BYTES, sources=client.is_server)
        return client

    def is_server(self, addr: Address) -> bool:
        """Whether C{addr} is a TURN server we hold or ask for an allocation on."""
        return addr in self._allocations or addr in self._allocating

    @property
    def allocations(self) -> dict[Address, Allocation]:
        """The live allocations, by server."""
        return dict(self._allocations)

    @property
    def stun(self) -> STUNClient:
        """The STUN client that runs the TURN requests."""
        return self._transactions.stun

    @property
    def schedule(self) -> RetransmissionSchedule | None:
        """The retransmission schedule of every TURN request (the STUN client's own when None)."""
        return self._transactions.schedule

    @property
    def software(self) -> str | None:
        """The SOFTWARE attribute of our requests, or None."""
        return self._transactions.software

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
            response, credentials = await self._transactions.allocate(
                server, username, password, attributes
            )
            allocation = Allocation(self._link, server, credentials, response, lifetime, receiver)
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

    async def _server_address(self, server: Address | None) -> Address:
        if self.server is not None:
            if server is not None and await self.stun.resolve(server) != self.server:
                raise ConfigurationError(f"this client talks to {format_address(self.server)} only")
            return self.server
        if server is None:
            raise ConfigurationError("a TURN client on UDP needs the server's address")
        return await self.stun.resolve(server)

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
            allocation.channel_data_received(channel_data.channel, channel_data.data)
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
        allocation.data_received(data.value, peer.address)

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
        self._transactions.abandon(reason)
        for allocation in list(self._allocations.values()):
            allocation.lose(reason)

    def doStop(self) -> None:
        self.lose_all(TURNUnavailable("the TURN client stopped", self.server))
        super().doStop()
