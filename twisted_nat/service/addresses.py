"""
Our own candidates: the host addresses, the public (server-reflexive)
address learnt on the shared socket, and the relayed addresses the relays
add.  The public address is relearnt after a path is lost, since a NAT that
lost its bindings may give us a new public port.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from twisted_nat.address import Address, family_of, format_address
from twisted_nat.candidates import (
    Candidate,
    CandidateType,
    host_candidates,
    interface_addresses,
    rank,
)
from twisted_nat.errors import TwistedNATError
from twisted_nat.hosts6 import ipv6_host_addresses
from twisted_nat.stun.client import DiscoveryResult, STUNClient

DISCOVERY_ATTEMPTS = 2
"""
Discoveries of the public address at start (each within the STUN client's
timeout) before going on without one and asking again in the background.
"""

REDISCOVERY = backoffPolicy(initialDelay=1.0, maxDelay=60.0, factor=2.0, jitter=lambda: 0.0)
"""Pauses between discoveries in the background, while there is no public address."""


class Addresses:
    """
    The candidates we offer, and the discovery of our public address.

    @ivar candidates: our candidates, ranked.
    @ivar public: what STUN last told us of our public address, if anything.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        stun: STUNClient,
        has_servers: bool,
        running: Callable[[], bool],
    ) -> None:
        self._reactor = reactor
        self._stun = stun
        self._has_servers = has_servers
        self._running = running
        self.candidates: list[Candidate] = []
        self.public: DiscoveryResult | None = None
        self.public6: DiscoveryResult | None = None
        """What STUN last told us of our IPv6 socket's public address, if anything."""
        self._stun6: STUNClient | None = None
        self._refreshing: Deferred[None] | None = None
        self._refresh_waiters: list[Deferred[None]] = []
        self._rediscovery: IDelayedCall | None = None
        self._rediscoveries = 0

    def gather_hosts(
        self,
        port: int,
        interface: str,
        addresses: Sequence[str] | None,
        ipv6: tuple[int, str, STUNClient] | None = None,
    ) -> None:
        """
        Host candidates for the shared socket's C{port}, bound to
        C{interface}, and for the IPv6 socket's, when there is one:
        C{ipv6} is its port, interface and STUN client.  Of C{addresses},
        given, the IPv6 ones are offered only with an IPv6 socket.
        """
        given = addresses
        if addresses is None:
            addresses = interface_addresses(include_loopback=interface.startswith("127."))
        if interface not in ("", "0.0.0.0"):
            addresses = [interface]
        found = host_candidates(port, [a for a in addresses if family_of(a) == 4])
        if ipv6 is not None:
            port6, interface6, self._stun6 = ipv6
            if interface6 != "::":
                hosts6 = [interface6]
            elif given is not None:
                hosts6 = [a for a in given if family_of(a) == 6]
            else:
                hosts6 = ipv6_host_addresses()
            found += host_candidates(port6, hosts6)
        self.candidates = rank(found)

    def add(self, candidate: Candidate) -> None:
        self.candidates = rank([*self.candidates, candidate])

    def remove(self, address: Address, kind: CandidateType | None = None) -> None:
        """Forget the candidates at C{address} (of C{kind} only, when given)."""
        self.candidates = [
            c
            for c in self.candidates
            if c.address != address or (kind is not None and c.kind is not kind)
        ]

    @property
    def refreshing(self) -> bool:
        """Whether our public address is being relearnt now."""
        return self._refreshing is not None

    async def discover(self) -> None:
        """
        (Re)learn our server-reflexive candidate on the shared socket (and
        on the IPv6 socket, at the same time); when STUN does not answer,
        keep asking in the background.
        """
        ipv6 = None
        if self._stun6 is not None and self._stun6.stun_servers:
            ipv6 = Deferred.fromCoroutine(self._discover6(self._stun6))
        try:
            await self._discover4()
        finally:
            if ipv6 is not None:
                await ipv6

    async def _discover6(self, stun: STUNClient) -> None:
        """
        The IPv6 server-reflexive candidate: the address itself when no
        NAT66 is on the way (then it is a host candidate already), another
        one behind a NAT66.  Without an answer, IPv6 goes on with its host
        candidates: no rediscovery is scheduled for it alone.
        """
        try:
            self.public6 = await stun.discover()
        except TwistedNATError as e:
            self.log.info("no public IPv6 address: {error}", error=e)
            return
        self.log.info(
            "public IPv6 address {public} (seen by {server})",
            public=format_address(self.public6.mapped),
            server=format_address(self.public6.server),
        )
        self._found_public(self.public6.mapped)

    def _found_public(self, mapped: Address) -> None:
        """Our server-reflexive candidate of C{mapped}'s family is C{mapped} now."""
        family = family_of(mapped[0])
        found = [
            c
            for c in self.candidates
            if c.kind is not CandidateType.SERVER_REFLEXIVE or family_of(c.host) != family
        ]
        if mapped not in [c.address for c in found]:
            found.append(Candidate(CandidateType.SERVER_REFLEXIVE, *mapped))
        self.candidates = rank(found)

    async def _discover4(self) -> None:
        if not self._has_servers:
            return
        for _ in range(DISCOVERY_ATTEMPTS):
            try:
                self.public = await self._stun.discover()
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
        self._found_public(self.public.mapped)
        self.log.info(
            "candidates: {candidates}",
            candidates=", ".join(
                f"{c.kind.value} {format_address(c.address)}" for c in self.candidates
            ),
        )

    def refresh(self) -> Deferred[None]:
        """Relearn the public address, one refresh at a time; later callers wait for it."""
        waiter: Deferred[None] = Deferred()
        self._refresh_waiters.append(waiter)
        if self._refreshing is None:
            self._refreshing = Deferred.fromCoroutine(self._refresh_once())
        return waiter

    async def _refresh_once(self) -> None:
        try:
            await self.discover()
        finally:
            self._refreshing = None
            waiters, self._refresh_waiters = self._refresh_waiters, []
            for waiter in waiters:
                waiter.callback(None)

    def _rediscover_later(self) -> None:
        """Without a public address the peers behind NATs cannot reach us: keep asking."""
        pending = self._rediscovery
        if not self._running() or (pending is not None and pending.active()):
            return
        delay = REDISCOVERY(self._rediscoveries)
        self._rediscoveries += 1
        self._rediscovery = self._reactor.callLater(delay, self.refresh)

    def stop(self) -> None:
        if self._rediscovery is not None and self._rediscovery.active():
            self._rediscovery.cancel()
        self._rediscovery = None
