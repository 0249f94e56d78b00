"""
The simulated world of the service's scenario tests: a simulated internet
with an RFC 5780 STUN server, an in-memory rendezvous, and peers each
behind a NAT of its own, each running a L{NATTraversalService}.

L{build_world} builds it; L{new_service} is the one place the tests
construct a service, so that a change to the service's constructor is
made in one function.  The spies at the end watch what a service does
(the datagrams it writes, the extra sockets it opens, the ports its
predictions see) without changing it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from zope.interface import implementer

from tests.fakes import Collector
from twisted_nat import testing as sim
from twisted_nat.address import Address
from twisted_nat.bases import Base
from twisted_nat.punch import PunchSettings, SymmetricSettings
from twisted_nat.rendezvous import Answer, InMemorySignalingHub, ISignaling, Offer
from twisted_nat.rendezvous.interfaces import OfferHandler
from twisted_nat.service import KeepAliveSettings, NATTraversalService, PeerSettings
from twisted_nat.stun.server import STUNServerGroup
from twisted_nat.trust import Identity, PeerKey
from twisted_nat.trust.known import KnownPeers

PRIMARY: Address = ("203.0.113.10", 3478)
ALTERNATE: Address = ("203.0.113.11", 3479)
BUSY_HOST = "192.0.2.99"
"""Where a busy neighbour sits, inside every peer's NAT."""
ELSEWHERE = "203.0.113.99"
"""Where busy neighbours send: a public address nobody owns (the NAT maps the flow all the same)."""

Kinds = Mapping[str, tuple[str, sim.PortAllocation]]
"""Each peer's name, with its NAT's classic type and port allocation."""

Sent = list[tuple[float, bytes, Address]]
"""Datagrams a socket sent: when, what and where to."""

T = TypeVar("T")


_KEEPALIVE = {
    "enable_keepalive": "enabled",
    "keepalive_interval": "interval",
    "keepalive_timeout": "timeout",
    "follow_lifetime": "follow_lifetime",
    "keepalive_checks": "checks",
}
_PUNCH = {"punch_timeout": "timeout", "punch_interval": "interval", "max_retries": "max_retries"}
_SYMMETRIC = {"birthday_sockets", "birthday_probes", "birthday_rate", "meeting_sockets"}


def peer_settings(**flat: Any) -> PeerSettings:
    """
    L{PeerSettings} from the flat names tests use: C{keepalive_interval},
    C{punch_timeout}, C{birthday_sockets}, ... beside the top-level fields.
    """
    keepalive = {_KEEPALIVE[k]: flat.pop(k) for k in list(flat) if k in _KEEPALIVE}
    punch = {_PUNCH[k]: flat.pop(k) for k in list(flat) if k in _PUNCH}
    symmetric = {k: flat.pop(k) for k in list(flat) if k in _SYMMETRIC}
    return PeerSettings(
        keepalive=KeepAliveSettings(**keepalive),
        punch=PunchSettings(**punch),
        symmetric=SymmetricSettings(**symmetric),
        **flat,
    )


def new_service(
    reactor: Any,
    stun_servers: Sequence[Address],
    *,
    name: str | None = None,
    signaling: ISignaling | None = None,
    protocol_factory: Any = None,
    rng: random.Random | None = None,
    known_peers: KnownPeers | None = None,
    **settings: Any,
) -> NATTraversalService:
    """
    A service on an ephemeral port of C{reactor} (a simulated host, or a
    clock for a service that is never started), asking C{stun_servers};
    C{settings} are flat setting names (L{peer_settings}).
    """
    return NATTraversalService(
        stun_servers,
        reactor=reactor,
        name=name,
        signaling=signaling,
        protocol_factory=protocol_factory,
        settings=peer_settings(**settings),
        rng=rng,
        known_peers=known_peers,
    )


@implementer(ISignaling)
class SlowSignaling:
    """
    A hub peer whose offers and answers take C{delay} each way, as through
    a server, and which keeps every offer it sent with the answer it got
    (L{sent}).
    """

    def __init__(self, inner: Any, clock: IReactorTime, delay: float) -> None:
        self.inner = inner
        self.clock = clock
        self.delay = delay
        self.sent: list[tuple[Offer, Answer]] = []

    @property
    def identity(self) -> Identity:
        return self.inner.identity  # type: ignore[no-any-return]

    @property
    def peer_name(self) -> str | None:
        return self.inner.peer_name  # type: ignore[no-any-return]

    def register(self, name: str) -> Deferred[None]:
        return self.inner.register(name)  # type: ignore[no-any-return]

    def when_registered(self) -> Deferred[None]:
        return self.inner.when_registered()  # type: ignore[no-any-return]

    def lookup(self, name: str) -> Deferred[PeerKey]:
        return self.inner.lookup(name)  # type: ignore[no-any-return]

    def connect(self, offer: Offer) -> Deferred[Answer]:
        answered: Deferred[Answer] = deferLater(
            self.clock, self.delay, lambda: self.inner.connect(offer)
        )

        def back(answer: Answer) -> Deferred[Answer]:
            return deferLater(self.clock, self.delay, lambda: answer)

        def keep(answer: Answer) -> Answer:
            self.sent.append((offer, answer))
            return answer

        return answered.addCallback(back).addCallback(keep)

    def set_offer_handler(self, handler: OfferHandler | None) -> None:
        self.inner.set_offer_handler(handler)

    def close(self) -> Deferred[None]:
        return self.inner.close()  # type: ignore[no-any-return]


class Busy(DatagramProtocol):
    """Another host's application, opening a flow to a new destination with each datagram."""

    def __init__(self) -> None:
        self.flows = 0

    def open_flows(self, count: int) -> None:
        assert self.transport is not None
        for _ in range(count):
            self.flows += 1
            self.transport.write(b"elsewhere", (ELSEWHERE, 10000 + self.flows))


@attrs.define
class World:
    """
    What L{build_world} built, by peer name: each peer's service, host,
    NAT and the application protocols its connections were given; its
    slowed signaling and its busy neighbour, where the world has them.
    """

    internet: sim.SimulatedInternet
    hub: InMemorySignalingHub
    services: dict[str, NATTraversalService] = attrs.Factory(dict)
    hosts: dict[str, sim.SimulatedHost] = attrs.Factory(dict)
    nats: dict[str, sim.NATBox] = attrs.Factory(dict)
    apps: dict[str, list[Collector]] = attrs.Factory(dict)
    signaling: dict[str, SlowSignaling] = attrs.Factory(dict)
    busy: dict[str, Busy] = attrs.Factory(dict)

    def stop(self) -> None:
        for service in self.services.values():
            service.stopService()
        self.internet.advance(1.0)  # datagrams in flight land


W = TypeVar("W", bound=World)


def build_world(
    kinds: Kinds,
    world_type: type[W],
    *,
    seed: int = 0,
    loss: float = 0.0,
    nat: sim.NATSettings | None = None,
    signaling_delay: float | None = None,
    busy_neighbours: bool = False,
    seeded_probes: bool = False,
    peer_options: Mapping[str, Mapping[str, Any]] | None = None,
    hub_type: type[InMemorySignalingHub] = InMemorySignalingHub,
    **options: Any,
) -> W:
    """
    The peers of C{kinds}, in order: the n-th behind a NAT at 198.51.100.n
    (with the L{add_nat<sim.SimulatedInternet.add_nat>} settings C{nat}), on
    host 192.0.2.(n + 10), its service started, ready and with its
    behaviour discovered; then C{loss} on every link.

    @param world_type: L{World}, or a subclass whose own fields have defaults.
    @param signaling_delay: when given, each service's signaling is a
        L{SlowSignaling} taking this long each way; else the hub's peer
        itself.
    @param busy_neighbours: give each NAT a quiet L{Busy} neighbour at
        L{BUSY_HOST}.
    @param seeded_probes: give each service a generator seeded from
        C{seed} for the ports it probes.
    @param peer_options: each peer's own service keywords, beside the
        common C{options}.
    @param hub_type: the rendezvous the peers meet at: the honest one, or
        a subclass that lies.
    """
    internet = sim.SimulatedInternet(seed=seed, latency=0.005)
    server = internet.add_host([PRIMARY[0], ALTERNATE[0]])
    STUNServerGroup(PRIMARY, ALTERNATE).listen(server)
    hub = hub_type(reactor=internet.clock)
    w = world_type(internet, hub)
    for index, (name, (kind, allocation)) in enumerate(kinds.items(), start=1):
        classic: Any = kind
        settings: sim.NATSettings = {"allocation": allocation, **(nat or {})}
        box = internet.add_nat_of_type(f"198.51.100.{index}", classic, **settings)
        host = internet.add_host(f"192.0.2.{index + 10}", behind=box)
        if busy_neighbours:
            w.busy[name] = Busy()
            internet.add_host(BUSY_HOST, behind=box).listenUDP(0, w.busy[name])
        apps: list[Collector] = []

        def factory(connection: Any, apps: list[Collector] = apps) -> Collector:
            app = Collector()
            apps.append(app)
            return app

        signaling: ISignaling = hub.peer(name, address=box.public_address)
        if signaling_delay is not None:
            signaling = w.signaling[name] = SlowSignaling(
                signaling, internet.clock, signaling_delay
            )
        if seeded_probes:
            # Not the internet's seed: the probes would pick the very
            # ports the simulated NAT picked, and hit every time.
            options["rng"] = random.Random(f"probes {seed}")
        service = new_service(
            host,
            [PRIMARY],
            name=name,
            signaling=signaling,
            protocol_factory=factory,
            host_addresses=[host.addresses[0]],
            **options,
            **(peer_options or {}).get(name, {}),
        )
        service.startService()
        w.services[name], w.hosts[name], w.nats[name], w.apps[name] = service, host, box, apps
    for service in w.services.values():
        internet.run_until(service.ready())
    internet.advance(1.0)  # behaviour discovery finishes in the background
    internet.loss = loss
    return w


# --- spies ---


def record_writes(service: NATTraversalService, internet: sim.SimulatedInternet) -> Sent:
    """Every datagram the service's shared socket sends from now on, with its time."""
    port: Any = service.port
    written: Sent = []
    write = port.write

    def recording(data: bytes, addr: Address) -> None:
        written.append((internet.clock.seconds(), data, addr))
        write(data, addr)

    port.write = recording
    return written


def sockets_opened(service: NATTraversalService, record: Callable[[str, list[Base]], T]) -> list[T]:
    """
    What C{record} makes of each opening of extra sockets from now on (the
    method that opened them, and their names), in order.
    """
    opened: list[T] = []
    extra = service.extra_sockets
    open_sockets = extra.open

    def spy(punch_id: bytes, count: int, method: str) -> list[Base]:
        names = open_sockets(punch_id, count, method)
        opened.append(record(method, list(names)))
        return names

    extra.open = spy  # type: ignore[method-assign]
    return opened


def latest_ports(service: NATTraversalService) -> list[int]:
    """The port the NAT handed out last, as each of the service's predictions saw it."""
    seen: list[int] = []
    service.punching.prediction_listeners.append(seen.append)
    return seen
