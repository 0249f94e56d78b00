"""
The service that composes everything for one application: one UDP socket
and its bases, our candidates, behaviour discovery, relays, the rendezvous,
punching, keep-alive and the application's connections.

    service = NATTraversalService(
        stun_servers=[("stun.example.net", 3478)],
        name="alice",
        rendezvous="tls:rendezvous.example.net:8765",
        identity=load_identity("alice.key"),
        known_peers=KnownPeers("known_peers"),
        protocol_factory=lambda connection: MyPeerProtocol(),
        stream_factory=Factory.forProtocol(MyStreamProtocol),
    )
    service.startService()
    connection = await service.connect("bob")
    connection.write(b"hello")
    protocol = await service.open_stream("bob", MyStreamProtocol())

The socket is bound in C{privilegedStartService}; then the public address
is discovered on that very socket (so it is the binding punching will use),
candidates are gathered, and the name is registered.  Each part has a
module of its own in this package; this class only wires them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, cast

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IReactorUDP,
)
from twisted.logger import Logger

from twisted_nat.address import Address
from twisted_nat.bases import BaseRegistry
from twisted_nat.candidates import Candidate
from twisted_nat.connection import AppDataRouter, PeerConnection
from twisted_nat.errors import ConfigurationError
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.nat import NATBehavior
from twisted_nat.portmap import ClientFactory
from twisted_nat.punch import ExtraSockets, HolePuncher, PunchResult
from twisted_nat.rendezvous import ISignaling, RendezvousClient
from twisted_nat.service.addresses import Addresses
from twisted_nat.service.behavior import BehaviorWatch
from twisted_nat.service.connections import Connections, ProtocolFactory
from twisted_nat.service.events import IPeerEvents, PeerEvents, PeerEventsBase
from twisted_nat.service.gathering import Gathering
from twisted_nat.service.ipv6 import IPv6Socket, ipv4_servers, ipv6_interface
from twisted_nat.service.portmapping import PortMapping
from twisted_nat.service.punching import Punching, need_signaling
from twisted_nat.service.recovery import Recovery
from twisted_nat.service.relays import Relays
from twisted_nat.service.report import peer_status
from twisted_nat.service.settings import DEFAULT_SETTINGS, PeerSettings
from twisted_nat.service.trust import PeerTrust, checked_name, choose_identity
from twisted_nat.service.waiting import both
from twisted_nat.sockbuf import widen_receive_buffer
from twisted_nat.streams.peers import PeerStreams
from twisted_nat.stun.client import DiscoveryResult, STUNClient
from twisted_nat.stun.message import MessageClass, Method
from twisted_nat.trust.keys import Identity, PeerKey
from twisted_nat.trust.known import KnownPeers


class NATTraversalService(MultiService):
    """
    NAT traversal for one application: the socket, its candidates, and its
    peer connections.

    @param stun_servers: C{(host, port)} STUN servers; the first RFC 5780
        one also serves behaviour discovery.
    @param reactor: the reactor to bind, time and connect with; the global
        reactor when not given.
    @param name: our name at the rendezvous.
    @param rendezvous: a client endpoint string for the rendezvous server,
        where C{name} is registered (again after every reconnection), or
        several for the nodes of one rendezvous (the peer moves to another
        when its node goes away, keeping its connections to peers); or
        pass C{signaling}, any L{ISignaling} already registered under
        C{name}, to carry offers yourself.
    @param protocol_factory: called with each new connection; the protocol
        it returns gets the connection's datagrams.
    @param stream_factory: builds the protocol of each stream a peer opens
        to us (C{buildProtocol} gets a L{PeerAddress}); without it, peers'
        streams are refused.
    @param settings: everything else (L{PeerSettings}).
    @param rng: where the birthday method's probed ports come from (a
        seeded generator makes a test repeat itself).
    @param identity: our long-term key, which our name is bound to and
        which signs our offers and answers; the C{signaling}'s own when
        one is given; a new one (logged) when neither is.
    @param known_peers: the keys pinned to names, and whom we answer; an
        in-memory store answering anyone when not given.
    @param mapping_clients: the port mapping clients (L{PeerSettings.port_mapping}):
        towards the default gateway when not given; tests give their own.
    """

    log = Logger()

    def __init__(
        self,
        stun_servers: Sequence[Address] = (),
        *,
        reactor: IReactorTime | None = None,
        name: str | None = None,
        rendezvous: str | Sequence[str] | None = None,
        signaling: ISignaling | None = None,
        protocol_factory: ProtocolFactory | None = None,
        stream_factory: IProtocolFactory | None = None,
        settings: PeerSettings = DEFAULT_SETTINGS,
        rng: random.Random | None = None,
        identity: Identity | None = None,
        known_peers: KnownPeers | None = None,
        mapping_clients: ClientFactory | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        assert reactor is not None
        if rendezvous is not None and signaling is not None:
            raise ConfigurationError("give a rendezvous endpoint or a signaling channel, not both")
        self._reactor: IReactorTime = reactor
        self.settings = settings
        self.stun_servers = list(stun_servers)
        if name is not None:
            name = checked_name(name)
        self.peer_name = name
        identity = choose_identity(identity, signaling, name)
        self.trust = PeerTrust(identity, known_peers if known_peers is not None else KnownPeers())
        """Our key, the keys we have pinned, and whose offers we answer."""
        self.signaling: ISignaling | None = signaling
        if rendezvous is not None:
            if name is None:
                raise ConfigurationError("a rendezvous needs a name to register")
            client = RendezvousClient(reactor, rendezvous, name, identity)
            client.setServiceParent(self)
            self.signaling = client

        self.port: IListeningPort | None = None
        self.mux = UDPMultiplexer()
        self.stun = STUNClient(ipv4_servers(self.stun_servers), reactor=reactor)
        self.bases = BaseRegistry()
        self.ipv6 = IPv6Socket(reactor, self.bases, self.stun_servers)
        """The IPv6 socket, bound when the settings and the machine allow (L{PeerSettings.ipv6})."""
        self.puncher = HolePuncher(reactor, self.bases)
        self.router = AppDataRouter(self.bases)
        # The reactor must provide IReactorUDP too; it is asked for sockets only once started.
        udp = cast(IReactorUDP, reactor)
        self.extra_sockets = ExtraSockets(
            udp, self.bases, settings.interface, settings.receive_buffer
        )
        """The birthday method's and meeting runs' sockets open now."""
        running = self._is_running
        self.events = PeerEvents()
        """Tells every watcher (L{watch}) what happens."""
        self.streams = PeerStreams(reactor, identity, self.router, stream_factory, settings.streams)
        """QUIC streams on every connection (L{open_stream})."""
        self.events.watchers.append(_GiveStreams(self.streams))
        self.addresses = Addresses(reactor, self.stun, bool(self.stun.stun_servers), running)
        self.relays = Relays(reactor, settings.turn_servers, self.bases, self.addresses, running)
        self.port_mapping = PortMapping(
            reactor,
            settings.port_mapping,
            self.addresses,
            mapping_clients,
            settings.port_mapping_lease,
        )
        """The shared socket's port mapped on the gateway, and offered as a candidate."""
        recovery = Recovery(
            reactor,
            self.addresses,
            lambda: self.signaling,
            self._our_name,
            self.connect,
            self.relays.verify,
        )
        self.links = Connections(
            reactor,
            self.puncher,
            self.router,
            self.extra_sockets,
            self.relays,
            settings.keepalive,
            protocol_factory,
            recovery.connect_again,
            recovery.relearn,
            running,
            self.events,
        )
        self.nat = BehaviorWatch(
            reactor,
            settings.interface,
            settings.keepalive.follow_lifetime,
            self.links.lifetime_found,
            self.events,
        )
        interface6 = ipv6_interface(True, settings.interface, settings.interface6)
        self.nat6 = BehaviorWatch(
            reactor, interface6 or "::", False, lambda _: None, PeerEvents(), "IPv6 NAT"
        )
        """Behaviour discovery on IPv6 ("no NAT, firewalled", or a NAT66), heard by no watcher."""
        self.punching = Punching(
            reactor,
            settings,
            self.puncher,
            self.extra_sockets,
            (self.addresses, self.nat, self.relays, self.links),
            rng if rng is not None else random.Random(),
            self.ready,
            self._shared_port,
            self.events,
            self.trust,
            self._our_name,
        )
        self.gathering = Gathering(
            settings,
            self.addresses,
            self.port_mapping,
            (self.nat, self.nat6),
            self.relays,
            self.ipv6,
            self.stun,
            self.events,
            lambda: self.signaling,
            self.connect,
        )
        """Our candidates, gathered at start."""

    # --- what the parts found ---

    @property
    def key(self) -> PeerKey:
        """Our public key: who we are to other peers."""
        return self.trust.key

    @property
    def candidates(self) -> list[Candidate]:
        return self.addresses.candidates

    @property
    def public(self) -> DiscoveryResult | None:
        return self.addresses.public

    @property
    def behavior(self) -> NATBehavior | None:
        return self.nat.behavior

    @property
    def binding_lifetime(self) -> float | None:
        return self.nat.binding_lifetime

    @property
    def keepalive_interval(self) -> float:
        return self.links.keepalive_interval

    @property
    def connections(self) -> dict[str, PeerConnection]:
        """The connections by peer name (read it; change it through L{connect} and L{close})."""
        return self.links.by_peer

    # --- life cycle ---

    def privilegedStartService(self) -> None:
        self.port = cast(IReactorUDP, self._reactor).listenUDP(
            self.settings.local_port,
            self.mux,  # type: ignore[arg-type]
            self.settings.interface,
            maxPacketSize=8192,
        )
        widen_receive_buffer(self.port, self.settings.receive_buffer)
        self.mux.add_stun(self.stun, [Method.BINDING], [MessageClass.SUCCESS, MessageClass.ERROR])
        self.relays.attach(self.mux, self.stun)
        self.puncher.attach(self.mux)
        self.router.attach(self.mux)
        self.streams.router.attach(self.mux)
        if self.ipv6.start(self.settings, self._shared_port()):
            self.relays.attach6(self.ipv6.mux, self.ipv6.stun)
        super().privilegedStartService()

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        super().startService()
        if self.signaling is not None:
            self.signaling.set_offer_handler(self.punching.on_offer)
        self.gathering.start(self._shared_port())

    def _our_name(self) -> str | None:
        if self.signaling is not None and self.signaling.peer_name is not None:
            return self.signaling.peer_name  # type: ignore[no-any-return]
        return self.peer_name

    def _is_running(self) -> bool:
        return bool(self.running)

    def _shared_port(self) -> int:
        assert self.port is not None
        return self.port.getHost().port  # type: ignore[attr-defined,no-any-return]

    def watch(self, watcher: IPeerEvents) -> None:
        """Tell C{watcher} what happens from now on (L{IPeerEvents})."""
        self.events.watchers.append(watcher)

    def ready(self) -> Deferred[None]:
        """Fires once the socket is bound and candidates are gathered."""
        return self.gathering.ready()

    def stopService(self) -> Deferred[None]:
        unmapping = self.port_mapping.stop()
        self.addresses.stop()
        self.nat.stop()
        self.relays.stop()
        self.links.stop()
        self.extra_sockets.close_all()
        stopping = Deferred.fromCoroutine(both(super().stopService(), unmapping))
        closing6 = self.ipv6.close()
        if closing6 is not None:
            stopping = Deferred.fromCoroutine(both(stopping, closing6))
        if self.port is not None:
            port, self.port = self.port, None
            stopped = port.stopListening()
            if stopped is not None:
                return Deferred.fromCoroutine(both(stopping, stopped))
        return stopping

    # --- connections ---

    def connect(
        self, name: str | None = None, key: PeerKey | None = None
    ) -> Deferred[PeerConnection]:
        """
        Offer a connection to the peer called C{name}, or holding C{key},
        or both, and punch it.

        By name alone, the peer's key is the one pinned for the name in
        our known peers; for a new name, the key that answers under that
        name (the rendezvous routes the offer), pinned once the peer's
        signed answer proves it.  With C{key}, that key, which
        must agree with a pin for C{name}.  A peer that answers with
        another key fails the connection with L{KeyMismatch}.
        """
        return Deferred.fromCoroutine(self._connect(name, key))

    async def _connect(self, name: str | None, key: PeerKey | None) -> PeerConnection:
        signaling, ours = need_signaling(self.signaling, self._our_name())
        if name is None and key is None:
            raise ConfigurationError("connect to a name, a key, or both")
        if name is not None:
            name = checked_name(name)
        return await self.punching.connect(signaling, ours, name, key)

    def open_stream(self, peer: str, protocol: IProtocol) -> Deferred[IProtocol]:
        """
        A stream to C{peer} (connected first if it is not), with
        C{protocol} connected to it; fails with a
        L{twisted_nat.errors.StreamError} or the connection's failure.
        """
        return Deferred.fromCoroutine(self._open_stream(peer, protocol))

    async def _open_stream(self, peer: str, protocol: IProtocol) -> IProtocol:
        name = checked_name(peer)
        connection = self.links.by_peer.get(name)
        if connection is None or connection.closed:
            connection = await self.connect(name)
        return await connection.open_stream(protocol)

    def close(self, peer: str) -> None:
        """Close the connection to C{peer}."""
        connection = self.links.by_peer.get(peer)
        if connection is not None:
            self.links.close(connection)

    # --- what operators read ---

    def status(self) -> dict[str, Any]:
        """The state of this peer, as served by C{--status}."""
        return peer_status(self._our_name(), self._shared_port() if self.port else None, self)


class _GiveStreams(PeerEventsBase):
    """Gives each connection its streams, before other watchers hear of it."""

    def __init__(self, streams: PeerStreams) -> None:
        self._streams = streams

    def connected(
        self, connection: PeerConnection, result: PunchResult, offerer: bool, again: bool
    ) -> None:
        self._streams.connected(connection, offerer)


NATTraversalManager = NATTraversalService
"""The name the first design gave the service; the same class, kept for its users."""
