"""
L{makeService}: the service tree for the command and options given to
C{twistd nat}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from twisted.application.service import IService, MultiService
from twisted.internet.interfaces import IReactorCore, IReactorTime, IReactorUDP
from twisted.logger import Logger

from twisted_nat.address import Address, parse_port
from twisted_nat.cluster.address import RedisAddress
from twisted_nat.errors import ConfigurationError
from twisted_nat.portmap import Mode
from twisted_nat.punch import SymmetricSettings, birthday, meeting
from twisted_nat.rendezvous import RendezvousService, make_rendezvous_service
from twisted_nat.rendezvous.directory import ClusterNodes
from twisted_nat.rendezvous.quotas import ServerLimits
from twisted_nat.rendezvous.registry import check_registry
from twisted_nat.service import KeepAliveSettings, NATTraversalService, PeerSettings
from twisted_nat.status import status_service
from twisted_nat.tap.options import (
    DEFAULT_ADDRESS,
    DEFAULT_ALTERNATE_ADDRESS,
    DEFAULT_ALTERNATE_PORT,
    DEFAULT_PORT,
    DemoOptions,
    Options,
)
from twisted_nat.tap.services import ExitOnListenFailure, Greeter, STUNServerService
from twisted_nat.trust import Identity
from twisted_nat.trust.keyfile import load_or_create_identity
from twisted_nat.trust.known import Accept, KnownPeers
from twisted_nat.trust.target import Target
from twisted_nat.turn.uri import TURNServer

_log = Logger()


def _identity(path: str | None) -> Identity | None:
    """Our key from C{path}, made there if missing; None (a key for this run) without one."""
    if path is None:
        return None
    identity, created = load_or_create_identity(path)
    if created:
        _log.info("made a new key {key} in {path}", key=identity.public.text, path=path)
    return identity


def _peer(
    reactor: IReactorTime,
    name: str,
    rendezvous: str | Sequence[str],
    stun: list[tuple[str, int]],
    connect: list[Target],
    port: int = 0,
    interface: str = "0.0.0.0",
    keepalive: bool = True,
    interval: float = 25.0,
    echo: bool = False,
    greet_every: float = 0.0,
    follow_lifetime: bool = False,
    turn_servers: Sequence[TURNServer] = (),
    birthday_sockets: int = birthday.DEFAULT_SOCKETS,
    birthday_probes: int = birthday.DEFAULT_PROBES,
    birthday_rate: float = birthday.DEFAULT_RATE,
    meeting_sockets: int = meeting.DEFAULT_SOCKETS,
    key: str | None = None,
    known_peers: str | None = None,
    accept: Accept = Accept.ANYONE,
    port_mapping: Mode = Mode.OFF,
    ipv6: bool = True,
    interface6: str | None = None,
) -> NATTraversalService:
    settings = PeerSettings(
        local_port=port,
        interface=interface,
        turn_servers=turn_servers,
        connect_to=connect,
        keepalive=KeepAliveSettings(
            enabled=keepalive, interval=interval, follow_lifetime=follow_lifetime
        ),
        symmetric=SymmetricSettings(
            birthday_sockets, birthday_probes, birthday_rate, meeting_sockets
        ),
        port_mapping=port_mapping,
        ipv6=ipv6,
        interface6=interface6,
    )
    service = NATTraversalService(
        stun,
        reactor=reactor,
        name=name,
        rendezvous=rendezvous,
        protocol_factory=lambda connection: Greeter(connection, reactor, echo, greet_every),
        settings=settings,
        identity=_identity(key),
        known_peers=KnownPeers(known_peers, accept),
    )
    return service


def _cluster(
    reactor: IReactorTime, address: RedisAddress, relay_timeout: float, limits: ServerLimits
) -> ClusterNodes:
    """This server as a node sharing its peers through Redis at C{address}."""
    try:
        from twisted_nat.cluster.node import ClusterNode
    except ImportError as e:
        raise ConfigurationError(
            f"--redis needs txredisapi ({e}): pip install 'twisted-nat[redis]'"
        ) from None
    return ClusterNode(reactor, address, relay_timeout, limits.max_pending)


def _metrics(
    endpoint: str, served: RendezvousService | NATTraversalService, reactor: IReactorTime
) -> IService:
    """Prometheus metrics of a rendezvous server or a peer on C{endpoint}."""
    try:
        from prometheus_client import CollectorRegistry

        from twisted_nat.metrics.exposition import metrics_service
        from twisted_nat.metrics.peer import PeerCollector, PeerMetrics
        from twisted_nat.metrics.rendezvous import RendezvousCollector
    except ImportError as e:
        raise ConfigurationError(_NO_METRICS.format(e)) from None
    registry = CollectorRegistry()
    if isinstance(served, RendezvousService):
        registry.register(RendezvousCollector(served.factory))
    else:
        registry.register(PeerCollector(PeerMetrics(served, reactor)))
    return metrics_service(endpoint, registry, cast(IReactorCore, reactor))


_NO_METRICS = "--metrics needs prometheus-client ({}): pip install 'twisted-nat[metrics]'"


def makeService(config: Options, reactor: IReactorTime | None = None) -> IService:
    """
    Build the service tree for C{twistd nat}.

    @param config: the parsed L{Options}.
    @param reactor: what the services run on: timers, and once they start
        UDP and TCP sockets, so it must also provide C{IReactorUDP} and
        C{IReactorTCP}.  The global reactor if not given.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = cast(IReactorTime, global_reactor)
    command = config.subCommand or "demo"
    sub = config.subOptions if config.subCommand else DemoOptions()
    if config.subCommand is None:
        sub.parseOptions([])
    top = ExitOnListenFailure(getattr(config, "parent", None), config["log-level"])
    try:
        if command == "server":
            alternate = None if sub["single"] else (sub["alternate-address"], sub["alternate-port"])
            STUNServerService(
                cast(IReactorUDP, reactor),
                (sub["address"], sub["port"]),
                alternate,
                sub["software"] or None,
                sub["rate-limit"],
            ).setServiceParent(top)
            if sub["address6"] is not None:
                alternate6 = sub["alternate-address6"]
                if alternate6 is not None and not sub["single"]:
                    alternate6 = (alternate6, sub["alternate-port"])
                STUNServerService(
                    cast(IReactorUDP, reactor),
                    (sub["address6"], sub["port"]),
                    None if sub["single"] else alternate6,
                    sub["software"] or None,
                    sub["rate-limit"],
                ).setServiceParent(top)
            if not sub["no-rendezvous"]:
                if sub["registry"] is not None:
                    check_registry(sub["registry"])
                cluster = None
                if sub["redis"] is not None:
                    cluster = _cluster(reactor, sub["redis"], sub["offer-timeout"], sub["limits"])
                rendezvous = make_rendezvous_service(
                    reactor,
                    sub["rendezvous"],
                    relay_timeout=sub["offer-timeout"],
                    registry=sub["registry"],
                    limits=sub["limits"],
                    cluster=cluster,
                )
                rendezvous.setServiceParent(top)
                if sub["status"]:
                    status_service(
                        sub["status"], rendezvous, cast(IReactorCore, reactor)
                    ).setServiceParent(top)
                if sub["metrics"]:
                    _metrics(sub["metrics"], rendezvous, reactor).setServiceParent(top)
        elif command == "peer":
            peer = _peer(
                reactor,
                sub["name"],
                sub["rendezvous"],
                sub["stun"],
                sub["connect"],
                sub["port"],
                sub["interface"],
                not sub["no-keepalive"],
                sub["keepalive-interval"],
                sub["echo"],
                sub["greet-every"],
                sub["follow-lifetime"],
                sub["turn"],
                birthday_sockets=sub["birthday-sockets"],
                birthday_probes=sub["birthday-probes"],
                birthday_rate=sub["birthday-rate"],
                meeting_sockets=sub["meeting-sockets"],
                key=sub["key"],
                known_peers=sub["known-peers"],
                accept=sub["accept"],
                port_mapping=sub["port-mapping"],
                ipv6=sub["ipv6"] == "auto",
                interface6=sub["interface6"],
            )
            peer.setServiceParent(top)
            if sub["status"]:
                status_service(sub["status"], peer, cast(IReactorCore, reactor)).setServiceParent(
                    top
                )
            if sub["metrics"]:
                _metrics(sub["metrics"], peer, reactor).setServiceParent(top)
        else:
            demo_service(reactor, sub).setServiceParent(top)
    except (ConfigurationError, ValueError) as e:
        raise SystemExit(f"twistd nat: {e}") from None
    return top


def demo_service(
    reactor: IReactorTime,
    options: DemoOptions,
    stun: tuple[Address, Address] = (
        (DEFAULT_ADDRESS, DEFAULT_PORT),
        (DEFAULT_ALTERNATE_ADDRESS, DEFAULT_ALTERNATE_PORT),
    ),
) -> MultiService:
    """
    The demonstration: an RFC 5780 STUN server, a rendezvous server, and
    peers alice and bob that connect, all on loopback.

    @param reactor: as for L{makeService}.
    @param options: the parsed L{DemoOptions}.
    @param stun: the STUN server's primary and alternate addresses; the
        defaults are the server command's, other ports let a test run the
        demonstration beside other servers.
    """
    demo = MultiService()
    primary, alternate = stun
    STUNServerService(
        cast(IReactorUDP, reactor), primary, alternate, "twisted-nat"
    ).setServiceParent(demo)
    rendezvous = make_rendezvous_service(reactor, options["rendezvous"])
    rendezvous.setServiceParent(demo)
    port = _port_of(options["rendezvous"])
    client_endpoint = f"tcp:host={DEFAULT_ADDRESS}:port={port}"
    bob = _peer(reactor, "bob", client_endpoint, [primary], [], interface="127.0.0.1", echo=True)
    alice = _peer(
        reactor,
        "alice",
        client_endpoint,
        [primary],
        [Target("bob")],
        interface="127.0.0.1",
        greet_every=5.0,
    )
    bob.setServiceParent(demo)
    alice.setServiceParent(demo)
    if options["status"]:
        status_service(options["status"], alice, cast(IReactorCore, reactor)).setServiceParent(demo)
    return demo


def _port_of(endpoint: str) -> int:
    """The port of a C{tcp:PORT...} server endpoint string, for the demo's clients."""
    parts = endpoint.split(":")
    if len(parts) < 2 or parts[0] != "tcp":
        raise ConfigurationError(f"the demo's rendezvous must be a tcp: endpoint, not {endpoint!r}")
    port_text = parts[1].split("=")[-1]
    return parse_port(port_text)
