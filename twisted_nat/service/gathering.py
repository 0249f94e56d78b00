"""
A service's start, once its sockets are bound: our candidates gathered in
order (host addresses, the port mapping, the public addresses, behaviour
discovery, relays), then whoever waits for them told, then the peers the
settings name connected to.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.connection import PeerConnection
from twisted_nat.punch import PunchFailed
from twisted_nat.rendezvous import ISignaling
from twisted_nat.service.addresses import Addresses
from twisted_nat.service.behavior import BehaviorWatch
from twisted_nat.service.events import PeerEvents
from twisted_nat.service.ipv6 import IPv6Socket, ipv6_interface
from twisted_nat.service.portmapping import PortMapping
from twisted_nat.service.relays import Relays
from twisted_nat.service.settings import PeerSettings
from twisted_nat.stun.client import STUNClient
from twisted_nat.trust.keys import PeerKey

Connect = Callable[[str | None, PeerKey | None], Deferred[PeerConnection]]


class Gathering:
    """
    Gathers our candidates once (L{start}) and fires L{ready} for whoever
    waits; a failure is logged and fails them all.

    @param watches: behaviour discovery on IPv4, then on IPv6.
    @param signaling: the service's signalling channel now, if any.
    @param connect: the service's own C{connect}, for C{connect_to}.
    """

    log = Logger()

    def __init__(
        self,
        settings: PeerSettings,
        addresses: Addresses,
        port_mapping: PortMapping,
        watches: tuple[BehaviorWatch, BehaviorWatch],
        relays: Relays,
        ipv6: IPv6Socket,
        stun: STUNClient,
        events: PeerEvents,
        signaling: Callable[[], ISignaling | None],
        connect: Connect,
    ) -> None:
        self._settings = settings
        self._addresses = addresses
        self._port_mapping = port_mapping
        self._nat, self._nat6 = watches
        self._relays = relays
        self._ipv6 = ipv6
        self._stun = stun
        self._events = events
        self._signaling = signaling
        self._connect = connect
        self._gathered = False
        self._waiting: list[Deferred[None]] = []

    def start(self, shared_port: int) -> None:
        """Gather the candidates of the shared socket, bound on C{shared_port}."""
        gathering = Deferred.fromCoroutine(self._gather(shared_port))
        gathering.addErrback(self._failed)

    def ready(self) -> Deferred[None]:
        """Fires once the candidates are gathered."""
        if self._gathered:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    async def _gather(self, shared_port: int) -> None:
        settings = self._settings
        port6 = self._ipv6.local_port
        interface6 = ipv6_interface(True, settings.interface, settings.interface6)
        self._addresses.gather_hosts(
            shared_port,
            settings.interface,
            settings.host_addresses,
            None if port6 is None or interface6 is None else (port6, interface6, self._ipv6.stun),
        )
        mapping = self._port_mapping.start(shared_port, settings.interface)
        await self._addresses.discover()
        await mapping
        if self._stun.stun_servers and settings.detect_behavior:
            self._nat.start(self._stun.stun_servers)
        if self._ipv6.port and self._ipv6.stun.stun_servers and settings.detect_behavior:
            self._nat6.start(self._ipv6.stun.stun_servers)
        if settings.turn_servers:
            await self._relays.start()
        self._gathered = True
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)
        signaling = self._signaling()
        if settings.connect_to and signaling is not None:
            await signaling.when_registered()
            for target in settings.connect_to:
                connecting = self._connect(target.name, target.key)
                connecting.addErrback(self._connect_failed, str(target))

    def _failed(self, failure: Failure) -> None:
        self.log.failure("gathering candidates failed", failure)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)

    def _connect_failed(self, failure: Failure, peer: str) -> None:
        error = failure.value
        brief = error.brief() if isinstance(error, PunchFailed) else error
        self.log.warn("could not connect to {peer}: {error}", peer=peer, error=brief)
        self.log.debug("punch with {peer} failed: {error}", peer=peer, error=error)
        self._events.punch_failed(peer, True, failure)
