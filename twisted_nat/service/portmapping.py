"""
Port mapping for the service: the shared socket's port mapped on the
default gateway (L{twisted_nat.portmap.PortMapper}), and the mapped public
address offered as a candidate for as long as the gateway holds it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorMulticast, IReactorTime
from twisted.logger import Logger

from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.limits import DropLog
from twisted_nat.portmap import (
    DEFAULT_LIFETIME,
    ClientFactory,
    Mapping,
    Mode,
    PortMapper,
    default_gateway,
    gateway_clients,
)
from twisted_nat.portmap.announce import AnnouncementListener, Announcements
from twisted_nat.service.addresses import Addresses
from twisted_nat.service.waiting import within

FIRST_SEARCH_WAIT = 4.0
"""
Seconds gathering waits for the first search, so that the first offers
carry the mapping: a gateway that speaks PCP or NAT-PMP answers within
milliseconds, one that does not costs one protocol's retransmissions.
"""


class PortMapping:
    """
    The service's port mapping, configured by C{mode}: off, or the
    protocols to try.  A socket bound to loopback is never mapped: no
    gateway forwards to it.  Towards the default gateway (no C{clients}
    given), its announcements of a restart are heard too
    (L{twisted_nat.portmap.announce}).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        mode: Mode,
        addresses: Addresses,
        clients: ClientFactory | None = None,
        lease: int = DEFAULT_LIFETIME,
        gateway: Callable[[], str | None] = default_gateway,
    ) -> None:
        self._reactor = reactor
        self.mode = mode
        self._addresses = addresses
        self._clients = clients
        self._lease = lease
        self.drops = DropLog(self.log, reactor)
        self.mapper: PortMapper | None = None
        self._first: Deferred[None] | None = None
        self._gateway = gateway
        self._gateway_address: str | None = None
        self.announcements: Announcements | None = None

    def start(self, port: int, interface: str) -> Deferred[None]:
        """Map C{port}; fires after the first search, or L{FIRST_SEARCH_WAIT}."""
        if self.mode is Mode.OFF:
            return succeed(None)
        if interface and ipaddress.ip_address(interface).is_loopback:
            self.log.debug("port mapping: off, the socket is bound to loopback")
            return succeed(None)
        clients = self._clients
        if clients is None:
            clients = gateway_clients(self._reactor, self.drops, self._gateway)
            self._gateway_address = self._gateway()
            listener = AnnouncementListener(
                lambda: self._gateway_address, self._announced, self.drops
            )
            self.announcements = Announcements(cast(IReactorMulticast, self._reactor), listener)
            self.announcements.start()
        self._first = Deferred()
        self.mapper = PortMapper(
            self._reactor,
            self.mode,
            clients,
            port,
            self._changed,
            self._lease,
            searched=self._searched,
        )
        self.mapper.start()
        return within(self._reactor, self._first, FIRST_SEARCH_WAIT)

    def _announced(self, epoch: int) -> None:
        if self.mapper is not None:
            self.mapper.announced()

    def _searched(self) -> None:
        if self.announcements is not None:
            self._gateway_address = self._gateway()  # another network, another gateway
        first, self._first = self._first, None
        if first is not None:
            first.callback(None)

    def _changed(self, old: Mapping | None, new: Mapping | None) -> None:
        if old is not None:
            self._addresses.remove(old.external, CandidateType.MAPPED)
        if new is not None:
            self._addresses.add(Candidate(CandidateType.MAPPED, *new.external))

    def stop(self) -> Deferred[None]:
        """Delete the mapping (within the protocol's bounded retransmissions)."""
        mapper, self.mapper = self.mapper, None
        announcements, self.announcements = self.announcements, None
        if announcements is not None:
            announcements.stop()
        self._searched()
        if mapper is None:
            return succeed(None)
        return mapper.stop()

    def status(self) -> dict[str, Any]:
        if self.mapper is None:
            return {"mode": self.mode.value, "mapping": None}
        return {**self.mapper.status(), "dropped": dict(sorted(self.drops.counts.items()))}
