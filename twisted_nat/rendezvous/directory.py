"""
What one rendezvous server knows and holds, shared by its connections: the
live connection of each key, the registry of names, the counters, and the
limits (L{twisted_nat.rendezvous.quotas}) with what they have taken.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from twisted_nat.limits import DropLog, KeyedBuckets
from twisted_nat.rendezvous.protocol import (
    MALFORMED_BOX,
    MALFORMED_COMMAND,
    Superseded,
    peer_address,
)
from twisted_nat.rendezvous.quotas import (
    Admission,
    PendingOffers,
    ServerLimits,
    connection_ceiling,
)
from twisted_nat.rendezvous.registry import INameRegistry
from twisted_nat.rendezvous.values import Answer, Offer
from twisted_nat.trust.keys import PeerKey


class HeldConnection(Protocol):
    """What the directory needs of a peer's connection (the server's protocol)."""

    key: PeerKey | None
    transport: Any

    def callRemote(self, commandType: Any, *a: Any, **kw: Any) -> Any: ...


C = TypeVar("C", bound=HeldConnection)


class Cluster(Protocol):
    """
    The other rendezvous nodes this server shares its peers with
    (L{twisted_nat.cluster.ClusterNode}), as the directory uses them.
    """

    def held(self, key: PeerKey) -> None:
        """A connection here holds C{key} now: offers for it come here."""

    def dropped(self, key: PeerKey) -> None:
        """No connection here holds C{key} any more."""

    def relay(self, offer: Offer, key: PeerKey, to: str) -> Deferred[Answer]:
        """C{offer} through the node holding C{key}, and its answer (C{to} names it in errors)."""


class ClusterNodes(Cluster, Protocol):
    """
    L{Cluster} as a service: the registry the nodes share, and how a server
    hands it what other nodes send it.
    """

    @property
    def registry(self) -> INameRegistry: ...

    def status(self) -> dict[str, object]:
        """Whether Redis is reachable, and what the node holds, for C{--status}."""

    def startService(self) -> None: ...

    def stopService(self) -> Deferred[None]: ...

    def serve(
        self,
        deliver: Callable[[Offer, PeerKey, str], Deferred[Answer]],
        moved: Callable[[PeerKey, str | None], None],
    ) -> None:
        """
        Answer offers other nodes relay with C{deliver(offer, key, node)},
        and call C{moved(key, node)} when a key we hold registered at
        another node (named when known).
        """


@attrs.define
class ServerStats:
    """
    Counters of one rendezvous server.

    @ivar refused: requests refused with an error, whatever the reason.
    @ivar refused_malformed: boxes refused as malformed: requests that do
        not parse, boxes that are no request or answer of ours.
    @ivar closed_oversized: connections closed for a box over the size or
        key limits.
    @ivar refused_connections: connections closed at once, over the limit in
        all or for their source.
    @ivar closed_idle: connections closed for registering no name in time.
    @ivar refused_busy: registrations over their source's rate, and offers
        over the limits of offers waiting for answers.
    @ivar offers_routed: offers relayed to a peer held by another node.
    @ivar offers_from_nodes: offers other nodes relayed to peers held here.
    @ivar moved: connections dropped because their key registered at
        another node since.
    """

    registrations: int = 0
    offers_relayed: int = 0
    relays_failed: int = 0
    refused: int = 0
    refused_malformed: int = 0
    closed_oversized: int = 0
    refused_connections: int = 0
    closed_idle: int = 0
    refused_busy: int = 0
    offers_routed: int = 0
    offers_from_nodes: int = 0
    moved: int = 0


class PeerDirectory(Generic[C]):
    """
    The live connections of one server, by peer key, the registry of names
    bound to keys, and the server's limits with what is held against them.

    @ivar max_connections: the limit's C{max_connections}, lowered to what
        the descriptor limit allows.
    @ivar drops: counts what the server refuses by reason, and logs it at a
        bounded rate.
    @ivar cluster: the other nodes sharing our peers, or None for a server
        on its own.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        relay_timeout: float,
        registry: INameRegistry,
        limits: ServerLimits,
    ) -> None:
        self.reactor = reactor
        self.relay_timeout = relay_timeout
        self.registry = registry
        self.limits = limits
        self.by_key: dict[PeerKey, C] = {}
        self.connections: set[C] = set()
        self.stats = ServerStats()
        self.max_connections = min(limits.max_connections, connection_ceiling())
        self.admission = Admission(self.max_connections, limits.max_per_source)
        self.registering: KeyedBuckets[str] = KeyedBuckets(
            limits.register_rate, limits.register_burst, limits.max_sources
        )
        self.pending = PendingOffers(limits.max_pending_per_connection, limits.max_pending)
        self.drops = DropLog(self.log, reactor)
        self._server_id: bytes | None = None
        self.cluster: ClusterNodes | None = None

    def server_id(self) -> Deferred[bytes]:
        """The registry's id, asked once."""
        if self._server_id is not None:
            return defer.succeed(self._server_id)

        def keep(server_id: bytes) -> bytes:
            self._server_id = server_id
            return server_id

        return self.registry.server_id().addCallback(keep)

    def may_register(self, source: str | None) -> bool:
        """Whether C{source} may register or release a name now; if so, it pays for it."""
        return source is None or self.registering.take(source, self.reactor.seconds())

    def refused(self, connection: C, reason: str, detail: str) -> None:
        """Count what C{connection} had refused, and log it at a bounded rate."""
        if reason in (MALFORMED_BOX, MALFORMED_COMMAND):
            self.stats.refused_malformed += 1
        self.drops.drop(
            reason,
            "Refused from {peer}: {why}: {detail}",
            peer=peer_address(connection),
            why=reason,
            detail=detail,
        )

    def hold(self, connection: C, key: PeerKey) -> None:
        """Make C{connection} the one that reaches C{key}; an older one is dropped."""
        old = self.by_key.get(key)
        if old is not None and old is not connection:
            self.log.info(
                "{key} registered again from {peer}: dropping its older connection from {old}",
                key=key.short,
                peer=peer_address(connection),
                old=peer_address(old),
            )
            self.supersede(old, "your key registered again from another connection")
        if connection.key is not None and connection.key != key:
            self.release(connection)
        self.by_key[key] = connection
        if self.cluster is not None:
            self.cluster.held(key)

    def supersede(self, old: C, why: str) -> None:
        """Tell C{old} that a newer connection holds its key, and close it."""
        old.key = None
        if old.transport is not None:
            old.callRemote(Superseded, reason=why)
            old.transport.loseConnection()

    def release(self, connection: C) -> None:
        key = connection.key
        if key is not None and self.by_key.get(key) is connection:
            del self.by_key[key]
            if self.cluster is not None:
                self.cluster.dropped(key)
