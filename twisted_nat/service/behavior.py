"""
What our NAT does, found in the background at start (RFC 5780 behaviour
discovery) and, on request, how long it keeps an idle binding.  What we
offer depends on it, so offers wait for it a little (L{BehaviorWatch.known}).
A discovery that could not tell the mapping (its answers lost, or refused
by a busy server) is run again a few times, later: the techniques for
symmetric NATs depend on knowing it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

from twisted.application.internet import backoffPolicy
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IReactorUDP
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.address import Address
from twisted_nat.nat import MappingBehavior, NATBehavior, detect_nat, measure_binding_lifetime
from twisted_nat.service.events import IPeerEvents
from twisted_nat.service.waiting import within

BEHAVIOR_WAIT = 2.0
"""How long an offer or answer waits for behaviour discovery still under way."""

RETRIES = 3
"""Discoveries after one that could not tell the mapping, at L{RETRY} delays."""

RETRY = backoffPolicy(initialDelay=5.0, maxDelay=60.0, factor=3.0, jitter=lambda: 0.0)
"""Seconds before retry N (0, 1, ...): 5, 15, 45."""


def conclusive(behavior: NATBehavior) -> bool:
    """Whether discovery told the mapping, which the punch plan needs."""
    return behavior.mapping is not MappingBehavior.UNKNOWN


class BehaviorWatch:
    """
    Behaviour discovery for one service.

    @param on_lifetime: called with the binding lifetime once measured
        (only with C{follow_lifetime}, and only behind a NAT).
    @param what: what the log calls it: the IPv6 socket's discovery says
        "IPv6 NAT type".
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        interface: str,
        follow_lifetime: bool,
        on_lifetime: Callable[[float], object],
        events: IPeerEvents,
        what: str = "NAT",
    ) -> None:
        self._what = what
        self._reactor = reactor
        self._interface = interface
        self._follow_lifetime = follow_lifetime
        self._on_lifetime = on_lifetime
        self._events = events
        self.behavior: NATBehavior | None = None
        self.binding_lifetime: float | None = None
        self._detecting: Deferred[None] | None = None
        self._servers: Sequence[Address] = ()
        self._retries = 0
        self._retry: IDelayedCall | None = None

    def start(self, servers: Sequence[Address]) -> None:
        self._servers = servers
        self._detect()

    def stop(self) -> None:
        """Run no more discoveries (one under way finishes)."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._servers = ()

    def _detect(self) -> None:
        self._retry = None
        if not self._servers:
            return
        detecting = detect_nat(cast(IReactorUDP, self._reactor), self._servers, self._interface)
        self._detecting = detecting.addCallbacks(self._found, self._failed)
        self._detecting.addBoth(self._done)

    def _again(self, why: str) -> bool:
        """Discover again later, if retries are left; whether it will."""
        if self._retries >= RETRIES or not self._servers:
            return False
        delay = RETRY(self._retries)
        self._retries += 1
        self.log.info(
            "NAT behaviour not known ({why}): discovering again in {delay:.0f} s",
            why=why,
            delay=delay,
        )
        self._retry = self._reactor.callLater(delay, self._detect)
        return True

    def known(self) -> Deferred[None]:
        """Fires once discovery is over, or after L{BEHAVIOR_WAIT}."""
        if self._detecting is None:
            return succeed(None)
        return within(self._reactor, self._detecting, BEHAVIOR_WAIT)

    def _found(self, behavior: NATBehavior) -> None:
        known = conclusive(behavior)
        if known or self.behavior is None:
            self._report(behavior)
        if not known and self._again("the mapping is unknown"):
            return
        if self._follow_lifetime and behavior.nat_present and self.binding_lifetime is None:
            measuring = Deferred.fromCoroutine(
                measure_binding_lifetime(
                    cast(IReactorUDP, self._reactor), behavior.server, self._interface
                )
            )
            measuring.addCallbacks(self._lifetime_found, self._lifetime_failed)

    def _report(self, behavior: NATBehavior) -> None:
        self.behavior = behavior
        self.log.info(
            "{what} type: {nat_type} ({mapping} mapping, {filtering} filtering)",
            what=self._what,
            nat_type=behavior.nat_type.value,
            mapping=behavior.mapping.value,
            filtering=behavior.filtering.value,
        )
        self._events.nat_found(behavior)

    def _lifetime_found(self, bounds: tuple[float, float]) -> None:
        alive, _ = bounds
        self.binding_lifetime = alive
        self._on_lifetime(alive)

    def _failed(self, failure: Failure) -> None:
        self.log.warn("NAT behaviour discovery failed: {error}", error=failure.value)
        self._again("discovery failed")

    def _lifetime_failed(self, failure: Failure) -> None:
        self.log.warn("measuring the NAT binding lifetime failed: {error}", error=failure.value)

    def _done(self, result: object) -> None:
        self._detecting = None
