"""
The service that composes everything: one UDP socket, STUN, behaviour
discovery, rendezvous, punching, keep-alive and the application's data.

    service = NATTraversalService(
        stun_servers=[("stun.example.net", 3478)],
        name="alice",
        rendezvous="tcp:host=rendezvous.example.net:port=8765",
        protocol_factory=lambda connection: MyPeerProtocol(),
    )
    service.setServiceParent(application)
    connection = await service.connect("bob")
    connection.write(b"hello")

The socket is bound in C{privilegedStartService}; then the public address
is discovered on that very socket (so it is the binding punching will
use), candidates are gathered, and the name is registered.  Incoming
offers are answered with our candidates and punched at once; outgoing
ones with L{connect}.  Every connection is kept alive and, when keep-alive
declares its path lost, punched again through the rendezvous by the peer
that made the first offer; the application's protocol stays attached to
the same L{PeerConnection} throughout.

With C{turn_servers}, each server lends us a relayed address (an
allocation on the shared socket for C{turn:...?transport=udp}, on a TCP or
TLS stream otherwise).  Each allocation is one more base of the punch:
its relayed candidate is offered, the peer's public addresses are
permitted on it before punching, and the puncher answers there what
arrives there.  A relayed path is taken only when no direct one works,
and left for a direct one that starts working later; when a direct path
dies, punching again falls back to the relay.

Offers and answers carry a hint of what our NAT does (L{NATHint}).  When
one side's NAT is symmetric with random ports and the other's maps
endpoint-independently but filters by port (a port-restricted cone), the
birthday method (L{twisted_nat.birthday}) finds a direct path: the
symmetric side opens C{birthday_sockets} extra sockets for the punch, the
cone side probes up to C{birthday_probes} random ports of the symmetric
side's address; the sockets the punch did not choose close as it ends,
the chosen one with its connection.  When both NATs are symmetric with
ports in sequence, each side names a meeting port in its hint and runs
C{meeting_sockets} extra sockets at the other's (L{twisted_nat.meeting}).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.address import format_address
from twisted_nat.bases import Base, BaseRegistry, relay_base
from twisted_nat.candidates import (
    Candidate,
    CandidateType,
    host_candidates,
    interface_addresses,
    rank,
)
from twisted_nat.connection import AppDataRouter, PeerConnection
from twisted_nat.control import SessionKeys
from twisted_nat.errors import (
    ConfigurationError,
    TURNAllocationClosed,
    TURNError,
    TwistedNATError,
)
from twisted_nat.keepalive import interval_for_lifetime
from twisted_nat.keeper import BindingLost
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.nat import (
    NATBehavior,
    detect_nat,
    latest_port,
    measure_binding_lifetime,
    predicted_candidates,
    prediction_step,
)
from twisted_nat.punch import (
    RELAY_PAIRED_KINDS,
    ExtraSockets,
    HolePuncher,
    Prober,
    PunchResult,
    SymmetricSettings,
    Technique,
    hint_for,
    plan,
)
from twisted_nat.punch.birthday import DEFAULT_PROBES, DEFAULT_RATE, DEFAULT_SOCKETS
from twisted_nat.punch.meeting import DEFAULT_SOCKETS as DEFAULT_MEETING_SOCKETS
from twisted_nat.rendezvous import (
    Answer,
    ISignaling,
    Offer,
    RendezvousClient,
    answer_to,
    new_offer,
)
from twisted_nat.rendezvous.values import NATHint
from twisted_nat.stun.client import DiscoveryResult, STUNClient
from twisted_nat.stun.message import MessageClass, Method
from twisted_nat.turn import Allocation, TURNClient, TURNServer, connect_stream

Address = tuple[str, int]
ProtocolFactory = Callable[[PeerConnection], AbstractDatagramProtocol | None]

RETRY_FIRST = 1.0
RETRY_CEILING = 30.0
"""Pauses between attempts to punch a lost path again: 1 s, doubling, at most 30 s."""


DISCOVERY_ATTEMPTS = 2
"""
Discoveries of the public address at start (each within the STUN client's
timeout, 5 s by default) before going on without one: at 10 % loss, one
start in a thousand gets no answer to four transmissions within 5 s, and a
peer without its server-reflexive candidate cannot be reached through a
NAT.
"""

REDISCOVER_FIRST = 1.0
REDISCOVER_CEILING = 60.0
"""Pauses between discoveries in the background, while there is no public address."""

BEHAVIOR_WAIT = 2.0
"""How long an offer waits for behaviour discovery still under way (it takes ~0.2 s)."""

REFRESH_WAIT = 2.0
"""
How long an answer waits for a rediscovery of our public address under
way.  Behaviour discovery (L{BEHAVIOR_WAIT}), this and the prediction
(L{PREDICTION_WAIT}) hold an answer back 6 s at most, within the 10 s a
rendezvous gives it (seen in the lab: an answer that waited for the whole
rediscovery came after the offerer's rendezvous had given up, and the
answering side punched alone).
"""

RELAY_WAIT = 5.0
"""
How long start-up waits for the relays before registering.  An allocation
takes two transactions (the 401 challenge, then the signed Allocate), a few
milliseconds, but each lost datagram costs a retransmission (0.5 s, then
1 s more): at 10 % loss one start in a dozen needs more than 2 s, and an
offer made without the relayed candidate cannot use the relay at all.  A
TURN server that does not answer would hold the start for the 40 s of
STUN's retransmissions; this bounds it.  A relay that comes later is
offered from then on.
"""

RELAY_RETRY_FIRST = 5.0
RELAY_RETRY_CEILING = 300.0
"""Pauses between attempts to get a relay again after an allocation ended."""


class NATTraversalService(MultiService):
    """
    NAT traversal for one application: the socket, its candidates, and its
    peer connections.

    @param local_port: the UDP port to bind (0 for any).
    @param stun_servers: C{(host, port)} STUN servers; the first RFC 5780
        one also serves behaviour discovery.
    @param enable_keepalive: keep every connection's NAT bindings open.
    @param keepalive_interval: seconds between KEEP_ALIVEs; with
        C{follow_lifetime}, replaced by half the binding lifetime measured.
    @param name: our name at the rendezvous.
    @param rendezvous: a client endpoint string for the rendezvous server,
        where C{name} is registered (again after every reconnection); or
        pass C{signaling}, any L{ISignaling} already registered under
        C{name}, to carry offers yourself.
    @param protocol_factory: called with each new connection; the protocol
        it returns gets the connection's datagrams.
    @param host_addresses: our interface addresses for host candidates
        (found with C{ifaddr} when not given).
    @param connect_to: peers to connect to as soon as we are ready and
        registered at the rendezvous.
    @param follow_lifetime: measure how long the NAT keeps an idle binding
        (in the background; it takes about twice that lifetime) and then
        send keep-alives at half of it instead of C{keepalive_interval}.
    @param turn_servers: TURN servers to allocate a relayed candidate on
        (see L{twisted_nat.turn.parse_turn_uri}); a relay is used only for
        the peers no direct path reaches.
    @param birthday_sockets: behind a symmetric NAT with random ports, how
        many extra sockets to open for a punch with a port-restricted cone
        (0: never); see L{twisted_nat.birthday} for what they buy.
    @param birthday_probes: behind a cone, how many random ports of such a
        peer's address to probe at most (0: never).
    @param birthday_rate: probes a second.
    @param meeting_sockets: behind a symmetric NAT with ports in sequence,
        how many extra sockets to run at a peer behind another such NAT
        (0: never); the most ports other flows may take on our NAT during
        a rendezvous round trip, plus one (L{twisted_nat.meeting}).
    @param rng: where the probed ports come from (a seeded generator makes
        a test repeat itself).
    """

    log = Logger()

    def __init__(
        self,
        local_port: int = 0,
        stun_servers: Sequence[Address] = (),
        enable_keepalive: bool = True,
        keepalive_interval: float = 25.0,
        *,
        reactor: Any = None,
        interface: str = "0.0.0.0",
        name: str | None = None,
        rendezvous: str | None = None,
        signaling: ISignaling | None = None,
        protocol_factory: ProtocolFactory | None = None,
        keepalive_timeout: float = 5.0,
        detect_behavior: bool = True,
        host_addresses: Sequence[str] | None = None,
        punch_timeout: float = 10.0,
        punch_interval: float = 0.2,
        max_retries: int = 30,
        connect_to: Sequence[str] = (),
        follow_lifetime: bool = False,
        turn_servers: Sequence[TURNServer] = (),
        birthday_sockets: int = DEFAULT_SOCKETS,
        birthday_probes: int = DEFAULT_PROBES,
        birthday_rate: float = DEFAULT_RATE,
        meeting_sockets: int = DEFAULT_MEETING_SOCKETS,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__()
        self.symmetric = SymmetricSettings(
            birthday_sockets, birthday_probes, birthday_rate, meeting_sockets
        )
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        if rendezvous is not None and signaling is not None:
            raise ConfigurationError("give a rendezvous endpoint or a signaling channel, not both")
        self._reactor = reactor
        self.local_port = local_port
        self.interface = interface
        self.stun_servers = list(stun_servers)
        self.enable_keepalive = enable_keepalive
        self.keepalive_interval = keepalive_interval
        self.keepalive_timeout = keepalive_timeout
        self.detect_behavior = detect_behavior
        self.peer_name = name
        self.protocol_factory = protocol_factory
        self.punch_timeout = punch_timeout
        self.punch_interval = punch_interval
        self.max_retries = max_retries
        self._host_addresses = list(host_addresses) if host_addresses is not None else None
        self.connect_to = list(connect_to)
        self.follow_lifetime = follow_lifetime
        self.binding_lifetime: float | None = None
        self.turn_servers = list(turn_servers)
        self.relays: dict[Base, Allocation] = {}
        """The live allocations, by their base."""
        self._turn_udp: TURNClient | None = None
        self._turn_streams: list[TURNClient] = []
        self._relay_retries: dict[TURNServer, Any] = {}
        self._rng = rng if rng is not None else random.Random()

        self.mux = UDPMultiplexer()
        self.stun = STUNClient(self.stun_servers, reactor=reactor)
        self.bases = BaseRegistry()
        self.puncher = HolePuncher(reactor, self.bases)
        self.router = AppDataRouter(self.bases)
        self.extra_sockets = ExtraSockets(reactor, self.bases, interface)
        """The birthday and meeting methods' sockets open now."""
        self.signaling: ISignaling | None = signaling
        if rendezvous is not None:
            if name is None:
                raise ConfigurationError("a rendezvous needs a name to register")
            client = RendezvousClient(reactor, rendezvous, name)
            client.setServiceParent(self)
            self.signaling = client

        self.port: IListeningPort | None = None
        self.public: DiscoveryResult | None = None
        self.behavior: NATBehavior | None = None
        self.candidates: list[Candidate] = []
        self.connections: dict[str, PeerConnection] = {}
        self._offered: set[str] = set()
        self._ready: Deferred[None] | None = None
        self._gathered = False
        self._refreshing: Deferred[None] | None = None
        self._retries: dict[str, Any] = {}
        self._refresh_waiters: list[Deferred[None]] = []
        self._detecting: Deferred[None] | None = None
        self._rediscovery: Any = None
        self._rediscoveries = 0
        self._waiting: list[Deferred[None]] = []

    # --- life cycle ---

    def privilegedStartService(self) -> None:
        self.port = self._reactor.listenUDP(self.local_port, self.mux, interface=self.interface)
        self.mux.add_stun(self.stun, [Method.BINDING], [MessageClass.SUCCESS, MessageClass.ERROR])
        if any(server.transport == "udp" for server in self.turn_servers):
            self._turn_udp = TURNClient.on_multiplexer(self.mux, self._reactor, stun=self.stun)
        self.puncher.attach(self.mux)
        self.router.attach(self.mux)
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()
        if self.signaling is not None:
            self.signaling.set_offer_handler(self._on_offer)
        self._ready = Deferred.fromCoroutine(self._gather())
        self._ready.addErrback(self._gathering_failed)

    async def _gather(self) -> None:
        assert self.port is not None
        port = self.port.getHost().port  # type: ignore[attr-defined]
        addresses = self._host_addresses
        if addresses is None:
            addresses = interface_addresses(include_loopback=self.interface.startswith("127."))
        if self.interface not in ("", "0.0.0.0"):
            addresses = [self.interface]
        self.candidates = rank(host_candidates(port, addresses))
        await self._discover_public()
        if self.stun_servers and self.detect_behavior:
            detecting = detect_nat(self._reactor, self.stun_servers, self.interface)
            self._detecting = detecting.addCallbacks(self._behavior_found, self._behavior_failed)
            self._detecting.addBoth(self._detected)
        if self.turn_servers:
            allocating = DeferredList(
                [Deferred.fromCoroutine(self._allocate(server, 0)) for server in self.turn_servers]
            )
            await _within(self._reactor, allocating, RELAY_WAIT)
        self._gathered = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
        if self.connect_to:
            registered = getattr(self.signaling, "when_registered", None)
            if registered is not None:
                await registered()
            for peer in self.connect_to:
                self.connect(peer).addErrback(self._punch_failed, peer)

    async def _discover_public(self) -> None:
        """
        (Re)learn our server-reflexive candidate on the shared socket: at
        start, and whenever a path was lost, since a NAT that lost its
        bindings may give us a new public port.
        """
        if not self.stun_servers:
            return
        for _ in range(DISCOVERY_ATTEMPTS):
            try:
                self.public = await self.stun.discover()
                break
            except TwistedNATError as e:
                error = e
        else:
            self.log.warn("no public address: {error}; asking again in the background", error=error)
            self._rediscover_later()
            return
        self._rediscoveries = 0
        self.log.info(
            "public address {public} (seen by {server})",
            public=format_address(self.public.mapped),
            server=format_address(self.public.server),
        )
        found = [c for c in self.candidates if c.kind is not CandidateType.SERVER_REFLEXIVE]
        if self.public.mapped not in [c.address for c in found]:
            found.append(Candidate(CandidateType.SERVER_REFLEXIVE, *self.public.mapped))
        self.candidates = rank(found)
        self.log.info(
            "candidates: {candidates}",
            candidates=", ".join(
                f"{c.kind.value} {format_address(c.address)}" for c in self.candidates
            ),
        )

    def _rediscover_later(self) -> None:
        """
        Without a public address the peers behind NATs cannot reach us
        directly: keep asking (1 s, doubling to a minute) until STUN answers.
        """
        pending = self._rediscovery
        if not self.running or (pending is not None and pending.active()):
            return
        delay = min(REDISCOVER_CEILING, REDISCOVER_FIRST * 2**self._rediscoveries)
        self._rediscoveries += 1
        self._rediscovery = self._reactor.callLater(delay, self._refresh)

    # --- relays ---

    async def _allocate(self, server: TURNServer, attempt: int) -> None:
        """
        A relayed candidate on C{server}, as one more base of every punch
        from now on.  A server that cannot be reached, or refuses, costs a
        warning, not the service: direct paths need no relay.
        """
        self._relay_retries.pop(server, None)
        stream: TURNClient | None = None
        try:
            if server.transport == "udp":
                assert self._turn_udp is not None
                allocation = await self._turn_udp.allocate(
                    (server.host, server.port), server.username, server.password
                )
            else:
                stream = await connect_stream(self._reactor, server.endpoint())
                self._turn_streams.append(stream)
                allocation = await stream.allocate(None, server.username, server.password)
        except (TwistedNATError, DNSLookupError) as e:
            if stream is not None:
                self._turn_streams.remove(stream)
                stream.close()
            if self.running:  # stopping cancels an allocation under way: nothing to say
                self.log.warn("no relay on {server}: {error}", server=server.uri(), error=e)
                self._retry_relay(server, attempt)
            return
        if not self.running:
            allocation.close()
            return
        base = relay_base(allocation.relayed_address)
        relay_mux = UDPMultiplexer()
        allocation.attach(relay_mux)
        self.bases.add(base, relay_mux)
        self.relays[base] = allocation
        host, port = allocation.relayed_address
        self.candidates = rank([*self.candidates, Candidate(CandidateType.RELAYED, host, port)])
        self.log.info(
            "relayed candidate {relayed} on {server}",
            relayed=format_address(allocation.relayed_address),
            server=server.uri(),
        )
        allocation.lost.addCallback(self._relay_lost, server, base)

    def _relay_lost(self, reason: TURNError, server: TURNServer, base: Base) -> None:
        allocation = self.relays.pop(base, None)
        self.bases.remove(base)
        if allocation is not None:
            relayed = allocation.relayed_address
            self.candidates = [c for c in self.candidates if c.address != relayed]
        if isinstance(reason, TURNAllocationClosed) or not self.running:
            return
        self.log.warn("{relay} lost: {reason}", relay=base, reason=reason)
        self._retry_relay(server, 0)

    def _retry_relay(self, server: TURNServer, attempt: int) -> None:
        if not self.running:
            return
        delay = min(RELAY_RETRY_CEILING, RELAY_RETRY_FIRST * 2**attempt)
        self._relay_retries[server] = self._reactor.callLater(
            delay,
            lambda: Deferred.fromCoroutine(self._allocate(server, attempt + 1)),
        )

    def _permit(self, remote: Sequence[Candidate]) -> None:
        """
        Let the peer's public addresses reach our relays before punching:
        a TURN server drops what comes from an address without permission.
        """
        hosts = sorted({c.host for c in remote if c.kind in RELAY_PAIRED_KINDS})
        if not hosts:
            return
        for base, allocation in self.relays.items():
            allocation.create_permission(*hosts).addErrback(self._not_permitted, base)

    def _not_permitted(self, failure: Failure, relay: Base) -> None:
        if self.running:  # stopping cancels what is still asked, and nobody needs to know
            self.log.warn("no permission on {relay}: {error}", relay=relay, error=failure.value)

    def _refresh(self) -> Deferred[None]:
        """One public-address refresh at a time; later callers wait for it."""
        waiter: Deferred[None] = Deferred()
        self._refresh_waiters.append(waiter)
        if self._refreshing is None:
            self._refreshing = Deferred.fromCoroutine(self._refresh_once())
        return waiter

    async def _refresh_once(self) -> None:
        try:
            await self._discover_public()
        finally:
            self._refreshing = None
            waiters, self._refresh_waiters = self._refresh_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _gathering_failed(self, failure: Failure) -> None:
        self.log.failure("gathering candidates failed", failure)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)

    def _behavior_found(self, behavior: NATBehavior) -> None:
        self.behavior = behavior
        self.log.info(
            "NAT type: {nat_type} ({mapping} mapping, {filtering} filtering)",
            nat_type=behavior.nat_type.value,
            mapping=behavior.mapping.value,
            filtering=behavior.filtering.value,
        )
        if self.follow_lifetime and behavior.nat_present:
            measuring = Deferred.fromCoroutine(
                measure_binding_lifetime(self._reactor, behavior.server, self.interface)
            )
            measuring.addCallbacks(self._lifetime_found, self._behavior_failed)

    def _lifetime_found(self, bounds: tuple[float, float]) -> None:
        """Keep-alive at half the measured lifetime, for every connection from now on."""
        alive, _ = bounds
        self.binding_lifetime = alive
        self.keepalive_interval = interval_for_lifetime(alive)
        self.log.info(
            "idle NAT bindings live {lifetime:.1f} s: keep-alive every {interval:.1f} s",
            lifetime=alive,
            interval=self.keepalive_interval,
        )
        for connection in self.connections.values():
            if connection.keepalive is not None:
                connection.keepalive.set_interval(self.keepalive_interval)

    def _behavior_failed(self, failure: Failure) -> None:
        self.log.warn("NAT behaviour discovery failed: {error}", error=failure.value)

    def _detected(self, result: object) -> None:
        self._detecting = None

    def _behavior_known(self) -> Deferred[None]:
        """
        Fires once behaviour discovery is over, or after
        L{BEHAVIOR_WAIT}: what we offer depends on it (predicted ports
        behind a NAT that allocates in sequence), and an offer made or
        answered in the first moments after start would go without.
        """
        if self._detecting is None:
            return succeed(None)
        return _within(self._reactor, self._detecting, BEHAVIOR_WAIT)

    def ready(self) -> Deferred[None]:
        """Fires once the socket is bound and candidates are gathered."""
        if self._gathered:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> Deferred[None]:
        for retry in [*self._retries.values(), *self._relay_retries.values(), self._rediscovery]:
            if retry is None:
                continue
            if retry.active():
                retry.cancel()
        self._retries.clear()
        self._relay_retries.clear()
        for allocation in list(self.relays.values()):
            # Deallocation is sent at once; nobody waits for its answer,
            # since the server frees an allocation that expires anyway.
            allocation.close()
        for stream in self._turn_streams:
            stream.close()
        self._turn_streams.clear()
        for connection in list(self.connections.values()):
            self._close(connection)
        self.extra_sockets.close_all()
        stopping = super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            stopped = port.stopListening()
            if stopped is not None:
                return Deferred.fromCoroutine(_both(stopping, stopped))
        return stopping  # type: ignore[no-any-return]

    # --- connections ---

    def connect(self, name: str) -> Deferred[PeerConnection]:
        """Offer a connection to the peer called C{name} and punch it."""
        return Deferred.fromCoroutine(self._connect(name))

    async def _connect(self, name: str) -> PeerConnection:
        if self.signaling is None or self.peer_name is None:
            raise ConfigurationError("connecting by name needs a name and a rendezvous")
        await self.ready()
        await self._behavior_known()
        candidates, latest = await self._candidates_for_punch()
        offer = new_offer(self.peer_name, candidates, self._nat_hint(latest))
        self.log.info("offering a connection to {peer}", peer=name)
        answer = await self.signaling.connect(name, offer)
        self._offered.add(name)
        result = await self._punch(
            offer, answer.candidates, controlling=True, ours=offer.nat, theirs=answer.nat
        )
        return self._connected(name, offer, result, controlling=True)

    def _on_offer(self, offer: Offer) -> Deferred[Answer]:
        """Answer an offer with our candidates, and punch at once."""
        self.log.info("{peer} offers a connection", peer=offer.from_name)
        return Deferred.fromCoroutine(self._answer(offer))

    async def _answer(self, offer: Offer) -> Answer:
        # The rendezvous client registers our name while candidates are
        # still being gathered: an offer arriving then must wait for them,
        # or the answer lacks our public address and the punch cannot work.
        await self.ready()
        await self._behavior_known()
        if self._refreshing is not None:
            # Our public address is being relearnt: answer with the new one
            # if it comes in time.  A rediscovery at 10 % loss can take ten
            # seconds, longer than the offerer's rendezvous waits for us.
            await _within(self._reactor, self._refresh(), REFRESH_WAIT)
        candidates, latest = await self._candidates_for_punch(offer.candidates)
        hint = self._nat_hint(latest)
        punching = self._punch(
            offer, offer.candidates, controlling=False, ours=hint, theirs=offer.nat
        )
        punching.addCallback(
            lambda result: self._connected(offer.from_name, offer, result, controlling=False)
        )
        punching.addErrback(self._punch_failed, offer.from_name)
        return answer_to(offer, candidates, hint)

    def _nat_hint(self, latest: int | None = None) -> NATHint | None:
        """What we tell the peer about our NAT (L{hint_for})."""
        return hint_for(self.behavior, self.symmetric, latest)

    async def _candidates_for_punch(
        self, remote: Sequence[Candidate] | None = None
    ) -> tuple[list[Candidate], int | None]:
        """
        Our candidates for one punch: behind a NAT whose mapping depends on
        the destination and which allocates ports in sequence, with the
        ports it will hand out next (L{twisted_nat.nat.prediction}), shaped
        after C{remote} when answering an offer, after our own candidates
        when offering.

        @return: the candidates, and the port the NAT handed out last when
            the prediction saw it.
        """
        behavior = self.behavior
        step = None if behavior is None else prediction_step(behavior)
        if behavior is None or step is None:
            return self.candidates, None
        mapped = await latest_port(self._reactor, behavior.server, self.interface)
        if mapped is None:
            return self.candidates, None
        latest = mapped[1]
        shape = self.candidates if remote is None else remote
        predicted = predicted_candidates(mapped, step, shape)
        self.log.info(
            "our NAT allocates ports in sequence: offering ports {first}-{last} too",
            first=min((c.port for c in predicted), default=latest),
            last=max((c.port for c in predicted), default=latest),
        )
        return rank([*self.candidates, *predicted]), latest

    def _punch(
        self,
        offer: Offer,
        remote: Sequence[Candidate],
        controlling: bool,
        ours: NATHint | None = None,
        theirs: NATHint | None = None,
    ) -> Deferred[PunchResult]:
        """
        Punch towards C{remote}, with the technique the hints both sides
        sent call for (L{plan}).
        """
        assert self.port is not None
        self._permit(remote)
        session_id = offer.session_id

        def better(result: PunchResult) -> None:
            self._moved(session_id, result)

        chosen = plan(ours, theirs, self.symmetric, remote, controlling)
        bases: list[Base] = []
        prober: Prober | None = None
        if chosen.technique is Technique.MEETING:
            assert ours is not None and chosen.spray_to is not None
            bases = self.extra_sockets.open(session_id, chosen.sockets, "meeting")
            self.log.info(
                "both NATs allocate in sequence: running {count} sockets from our port {ours}"
                " to {peer}",
                count=len(bases),
                ours=ours.meet,
                peer=format_address(chosen.spray_to[0].address),
            )
        elif chosen.technique is Technique.BIRTHDAY_SOCKETS:
            bases = self.extra_sockets.open(session_id, chosen.sockets, "birthday")
            self.log.info(
                "our NAT is symmetric and the peer's a cone: punching from {count} more sockets",
                count=len(bases),
            )
        elif chosen.technique is Technique.BIRTHDAY_PROBES:
            assert chosen.probe_host is not None
            prober = Prober(
                chosen.probe_host,
                self.symmetric.birthday_probes,
                self.symmetric.birthday_rate,
                self._reactor.seconds() + chosen.probe_delay,
                self._rng,
            )

        def settled(base: Base | None) -> None:
            self.extra_sockets.settle(session_id, base)

        try:
            return self.puncher.punch_hole(
                self.port.getHost().port,  # type: ignore[attr-defined]
                remote,
                session_id,
                timeout=self.punch_timeout,
                max_retries=self.max_retries,
                secret=offer.key,
                controlling=controlling,
                local_candidates=self.candidates,
                interval=self.punch_interval,
                on_better_path=better,
                bases=bases,
                prober=prober,
                on_settled=settled if bases else None,
                spray_to=chosen.spray_to,
            )
        except BaseException:
            self.extra_sockets.settle(session_id, None)
            raise

    def _moved(self, session_id: bytes, result: PunchResult) -> None:
        """A session connected over a relay found a direct path: move there."""
        for connection in self.connections.values():
            if connection.session_id == session_id and not connection.closed:
                break
        else:
            return
        connection.move(result.remote, result.local_kind, result.rtt, result.base, result.relayed)
        self._prune_sockets()
        self.log.info(
            "moved {peer} to a better path: {path} after {elapsed:.0f} ms",
            peer=connection.peer,
            path=connection.describe_path(),
            elapsed=result.elapsed * 1000,
        )
        self._keep_alive(connection)

    def _punch_failed(self, failure: Failure, peer: str) -> None:
        self.log.warn("could not connect to {peer}: {error}", peer=peer, error=failure.value)

    def _connected(
        self, peer: str, offer: Offer, result: PunchResult, controlling: bool
    ) -> PeerConnection:
        keys = SessionKeys.derive(offer.session_id, offer.key, offerer=controlling)
        existing = self.connections.get(peer)
        if existing is not None and not existing.closed:
            self.puncher.forget(existing.session_id)
            existing.rebind(
                keys,
                result.remote,
                result.local_kind,
                result.rtt,
                result.elapsed,
                result.base,
                result.relayed,
            )
            connection = existing
        else:
            connection = PeerConnection(
                self.router,
                keys,
                result.remote,
                result.local_kind,
                result.rtt,
                result.elapsed,
                peer=peer,
                base=result.base,
                relayed=result.relayed,
            )
            self.connections[peer] = connection
            if self.protocol_factory is not None:
                protocol = self.protocol_factory(connection)
                if protocol is not None:
                    connection.set_protocol(protocol)
        rtt = f"{result.rtt * 1000:.1f} ms" if result.rtt is not None else "unknown"
        self.log.info(
            "connected to {peer} via {path} in {setup:.0f} ms, round trip {rtt}",
            peer=peer,
            path=connection.describe_path(),
            setup=result.elapsed * 1000,
            rtt=rtt,
        )
        self._prune_sockets()
        self._keep_alive(connection)
        return connection

    def _prune_sockets(self) -> None:
        """Close the extra sockets whose connection closed, or moved away."""
        kept = self.extra_sockets.kept
        if kept:  # nearly always empty: no need to look at every connection
            in_use = {c.base for c in self.connections.values() if c.base in kept and not c.closed}
            self.extra_sockets.prune(in_use)

    def _keep_alive(self, connection: PeerConnection) -> None:
        """Keep-alive on the connection's path (again, after a move)."""
        if connection.base.relayed:
            # Through our relay: a channel costs 4 bytes a datagram, where a
            # Send indication costs 36.
            allocation = self.relays.get(connection.base)
            if allocation is not None and allocation.active:
                allocation.bind_channel(connection.remote_address).addErrback(
                    lambda failure: self.log.info(
                        "no channel to {peer}: {error}", peer=connection.peer, error=failure.value
                    )
                )
        if not self.enable_keepalive:
            return
        self.puncher.stop_binding(connection.session_id)
        interval = self.keepalive_interval
        keeping = self.puncher.maintain_binding(
            connection,
            connection.remote_address,
            interval=interval,
            timeout=min(self.keepalive_timeout, interval),
            base=connection.base,
        )
        keeping.addErrback(self._path_lost, connection)

    def _path_lost(self, failure: Failure, connection: PeerConnection) -> None:
        failure.trap(BindingLost)
        peer = connection.peer or "?"
        if connection.closed:
            return
        connection.reconnecting = True
        if peer in self._offered:
            self._punch_again(connection, 0)
        else:
            self._refresh()
            self.log.info("waiting for {peer} to punch again", peer=peer)

    def _punch_again(self, connection: PeerConnection, attempt: int) -> None:
        """
        Punch again through the rendezvous, and keep trying with growing
        pauses (1 s doubling to 30 s) until it works or the connection is
        closed: whatever broke the path (a rebooted router) may well have
        broken the rendezvous connection too, which needs time to return.
        """
        peer = connection.peer or "?"
        self._retries.pop(peer, None)
        if connection.closed or not self.running:
            return
        self.log.info("punching again to {peer} (attempt {n})", peer=peer, n=attempt + 1)
        again = self._refresh().addCallback(lambda _: self.connect(peer))

        def failed(failure: Failure) -> None:
            delay = min(RETRY_CEILING, RETRY_FIRST * 2**attempt)
            self.log.warn(
                "punching again to {peer} failed ({error}); next try in {delay:.0f} s",
                peer=peer,
                error=failure.value,
                delay=delay,
            )
            if not connection.closed and self.running:
                self._retries[peer] = self._reactor.callLater(
                    delay, self._punch_again, connection, attempt + 1
                )

        again.addErrback(failed)

    def close(self, peer: str) -> None:
        """Close the connection to C{peer}."""
        connection = self.connections.get(peer)
        if connection is not None:
            self._close(connection)

    def _close(self, connection: PeerConnection) -> None:
        self.puncher.forget(connection.session_id)
        connection.close()
        if connection.peer is not None and self.connections.get(connection.peer) is connection:
            del self.connections[connection.peer]
        self._prune_sockets()

    # --- what operators read ---

    def status(self) -> dict[str, Any]:
        """The state of this peer, as served by C{--status}."""

        def endpoint(address: Address | None) -> str | None:
            return None if address is None else format_address(address)

        connections = []
        for peer, connection in sorted(self.connections.items()):
            quality = connection.quality()
            connections.append(
                {
                    "peer": peer,
                    "path": {
                        "local": connection.local_kind.value if connection.local_kind else None,
                        "remote": connection.remote.kind.value,
                        "remote_address": endpoint(connection.remote_address),
                    },
                    "relayed": connection.relayed,
                    "setup_ms": round(connection.setup_time * 1000, 3),
                    "reconnecting": connection.reconnecting,
                    "rtt_ms": _ms(
                        quality.rtt if quality and quality.rtt is not None else connection.rtt
                    ),
                    "loss": quality.loss if quality else None,
                    "jitter_ms": _ms(quality.jitter if quality else None),
                }
            )
        return {
            "name": self.peer_name,
            "local_port": self.port.getHost().port if self.port else None,  # type: ignore[attr-defined]
            "public": endpoint(self.public.mapped if self.public else None),
            "nat": self.behavior.as_json() if self.behavior else None,
            "candidates": [c.as_json() for c in self.candidates],
            "relays": sorted(
                format_address(a.relayed_address) for a in self.relays.values() if a.active
            ),
            "connections": connections,
        }


NATTraversalManager = NATTraversalService
"""The name the first design gave the service; the same class."""


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


async def _both(first: Any, second: Any) -> None:
    if first is not None:
        await first
    await second


def _within(reactor: Any, waited: Deferred[Any], seconds: float) -> Deferred[None]:
    """Fires when C{waited} does or after C{seconds}, whichever comes first; never fails."""
    done: Deferred[None] = Deferred()

    def fire(_: object = None) -> None:
        if not done.called:
            done.callback(None)
        if timer.active():
            timer.cancel()

    timer = reactor.callLater(seconds, fire)
    waited.addBoth(fire)
    return done
