"""
The port mapper: one mapping of the shared socket's port on the default
gateway, made by the first protocol that gets one, renewed at half its
lease, made again when the gateway shows it lost it, and deleted when the
service stops.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.address import format_address
from twisted_nat.errors import PortMappingError
from twisted_nat.portmap.announce import ANNOUNCE_SPACING, ANNOUNCE_SPREAD
from twisted_nat.portmap.client import Grant, IMappingClient
from twisted_nat.portmap.lease import retry_renewal, search_again
from twisted_nat.portmap.values import DEFAULT_LIFETIME, Mapping, Mode, Protocol

ClientFactory = Callable[[Protocol], IMappingClient]
"""A new client of a protocol towards the gateway; L{PortMappingError} if there is none."""

Changed = Callable[[Mapping | None, Mapping | None], None]
"""Told C{(old, new)} whenever the mapped external address appears, changes or goes."""


class PortMapper:
    """
    Keeps C{internal_port} mapped.  Searches try C{mode}'s protocols in
    order; the one that maps keeps the mapping until it fails past the
    lease's end, and then a new search starts.  L{stop} deletes it.
    C{searched} is told each time a search ends, mapped or not.

    @ivar mapping: what the gateway granted and we hold, if anything.
    @ivar failures: why each protocol failed in the last search.
    @ivar renewals: how many renewals the gateway granted.
    @ivar restores: how often the gateway had lost the mapping and it was
        made again.
    @ivar announcements: how many of the gateway's announcements brought a
        check forward (L{announced}).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        mode: Mode,
        clients: ClientFactory,
        internal_port: int,
        changed: Changed,
        lifetime: int = DEFAULT_LIFETIME,
        searched: Callable[[], object] = lambda: None,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self.mode = mode
        self._clients = clients
        self._port = internal_port
        self._changed = changed
        self._lifetime = lifetime
        self._searched = searched
        self.mapping: Mapping | None = None
        self.failures: dict[Protocol, str] = {}
        self.restores = 0
        self.renewals = 0
        self.announcements = 0
        self._rng = rng if rng is not None else random.Random()
        self._quiet_until = -math.inf
        self._client: IMappingClient | None = None
        self._trying: IMappingClient | None = None
        self._timer: IDelayedCall | None = None
        self._working: Deferred[None] | None = None
        self._renewal_failures = 0
        self._searches = 0
        self._running = False

    def start(self) -> None:
        """Search now (in the reactor's next turn)."""
        if self.mode.protocols and not self._running:
            self._running = True
            self._at(self._clock.seconds())

    def _at(self, when: float) -> None:
        if self._running:
            delay = max(0.0, when - self._clock.seconds())
            self._timer = self._clock.callLater(delay, self._work)

    def announced(self) -> None:
        """
        The gateway announced a (re)start: renew, or search, within a
        random L{ANNOUNCE_SPREAD} rather than when due, at most once per
        L{ANNOUNCE_SPACING} (a forged announcement costs one request).
        """
        now = self._clock.seconds()
        timer = self._timer
        if not self._running or timer is None or now < self._quiet_until:
            return  # stopped, or asking already
        self._quiet_until = now + ANNOUNCE_SPACING
        when = now + self._rng.uniform(0.0, ANNOUNCE_SPREAD)
        if timer.getTime() <= when:
            return
        timer.cancel()
        self.announcements += 1
        self.log.debug("port mapping: the gateway announced a restart; asking it again")
        self._at(when)

    def _work(self) -> None:
        self._timer = None
        self._working = Deferred.fromCoroutine(self._step())
        self._working.addErrback(self._broke)

    def _broke(self, failure: Failure) -> None:
        self._working = None
        self.log.failure("port mapping failed unexpectedly", failure)

    async def _step(self) -> None:
        if self._client is not None and self.mapping is not None:
            await self._renew(self._client, self.mapping)
        else:
            await self._search()
        self._working = None

    async def _search(self) -> None:
        self.failures = {}
        for protocol in self.mode.protocols:
            if not self._running:
                return
            try:
                client = self._trying = self._clients(protocol)
                grant = await client.map(self._port, self._lifetime, None)
            except PortMappingError as e:
                self.failures[protocol] = e.reason
                self.log.debug(
                    "port mapping: {protocol}: {error}", protocol=protocol.label, error=e
                )
                if self._trying is not None:
                    self._trying.close()
                continue
            finally:
                self._trying = None
            self._client = client
            self._searches = 0
            self._granted(grant)
            self._searched()
            return
        self._searches += 1
        tried = "; ".join(f"{p.label}: {reason}" for p, reason in self.failures.items())
        if self._searches == 1:
            self.log.info("port mapping: no gateway maps our port ({tried})", tried=tried)
        self._at(search_again(self._clock.seconds(), self._searches - 1))
        self._searched()

    async def _renew(self, client: IMappingClient, mapping: Mapping) -> None:
        try:
            grant = await client.map(self._port, self._lifetime, mapping)
        except PortMappingError as e:
            self._renewal_failures += 1
            now = self._clock.seconds()
            again = retry_renewal(mapping, now, self._renewal_failures)
            if again is None:
                self.log.info(
                    "port mapping: {protocol} mapping {external} ended ({error}); searching again",
                    protocol=mapping.protocol.label,
                    external=format_address(mapping.external),
                    error=e,
                )
                self._forget(client, mapping)
                self._at(now)
            else:
                self.log.debug("port mapping: renewal failed: {error}", error=e)
                self._at(again)
            return
        self._renewal_failures = 0
        self.renewals += 1
        self._granted(grant)

    def _granted(self, grant: Grant) -> None:
        old, new = self.mapping, grant.mapping
        self.mapping = new
        if not self._running:
            return
        if grant.gateway_restarted:
            self.restores += 1
            self.log.info(
                "port mapping: the gateway had lost our mapping: {new}", new=new.describe()
            )
        elif old is None:
            self.log.info("port mapping: {new}", new=new.describe())
        else:
            self.log.debug("port mapping renewed: {new}", new=new.describe())
        if old is None or old.external != new.external:
            self._changed(old, new)
        self._at(new.renew_at)

    def _forget(self, client: IMappingClient, mapping: Mapping) -> None:
        client.close()
        self._client = None
        self.mapping = None
        self._renewal_failures = 0
        self._changed(mapping, None)

    def stop(self) -> Deferred[None]:
        """Stop renewing and delete the mapping; fires when done (each step is bounded)."""
        self._running = False
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._trying is not None:
            self._trying.close()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        if self._working is not None:
            await self._working
        client, mapping = self._client, self.mapping
        if client is None:
            return
        try:
            if mapping is not None:
                await client.unmap(mapping)
                self.log.debug("port mapping: deleted {external}", external=mapping.external)
        except PortMappingError as e:
            self.log.debug("port mapping: could not delete the mapping: {error}", error=e)
        finally:
            if mapping is not None:
                self._forget(client, mapping)
            else:
                client.close()
                self._client = None

    def status(self) -> dict[str, object]:
        """What C{--status} shows: the protocol, the mapping and its expiry, or why none."""
        now = self._clock.seconds()
        return {
            "mode": self.mode.value,
            "mapping": None if self.mapping is None else self.mapping.as_json(now),
            "failures": {p.value: reason for p, reason in self.failures.items()},
            "renewed": self.renewals,
            "restored": self.restores,
            "announced": self.announcements,
        }
