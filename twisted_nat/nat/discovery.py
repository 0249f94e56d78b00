"""
NAT behaviour discovery (RFC 5780): what NAT am I behind, and can I be
reached?  The I/O of it: the sockets, the tests and their timing; what the
answers mean is decided in L{twisted_nat.nat.rfc5780}.

Two sockets are used, because the filtering tests must run on a binding
that has only ever sent to the server's primary address, while the mapping
tests send to the alternate one.  Tests that can run at once do, and "no
answer" is decided inside a window derived from the measured round trip
(with evenly spaced retransmissions inside it to survive loss), not after
RFC 8489's 39.5 seconds; the whole discovery takes a few round trips plus
one window.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUDP
from twisted.logger import Logger

from twisted_nat.address import Address, format_address
from twisted_nat.errors import ConfigurationError, DiscoveryError, STUNTimeout
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.nat.behavior import FilteringBehavior, MappingBehavior, NATBehavior, port_delta
from twisted_nat.nat.hairpin import HairpinListener
from twisted_nat.nat.lifetime import measure_binding_lifetime
from twisted_nat.nat.rfc5780 import (
    Finding,
    Outcome,
    filtering_behavior,
    mapping_across_servers,
    mapping_behavior,
    usable_other_address,
)
from twisted_nat.stun.attributes import ChangeRequest
from twisted_nat.stun.client import Resolver, Response, RetransmissionSchedule, STUNClient
from twisted_nat.stun.message import MessageClass, Method, request

_WILDCARDS = ("", "0.0.0.0", "::")

STEP_FLOWS = 3
"""New flows opened at once for a second look at a NAT's port sequence."""


def route_source(destination: str) -> str | None:
    """
    The local address the operating system would use to reach
    C{destination}: a connected UDP socket is routed but sends nothing.
    """
    family = socket.AF_INET6 if ":" in destination else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((destination, 9))
            return str(probe.getsockname()[0])
    except OSError:
        return None


async def _settle(d: Deferred[Response]) -> Outcome:
    """
    Await C{d}, turning a failure into a value (the exception itself, since
    a Deferred would take a returned Failure for an error), so gathered
    tests never raise.
    """
    try:
        return await d
    except Exception as e:
        return e


@attrs.define
class _Socket:
    """One discovery socket: its STUN client and its listening port."""

    client: STUNClient
    port: IListeningPort
    hairpin: HairpinListener | None = None


class BehaviorDiscovery:
    """
    One run of RFC 5780 behaviour discovery against C{servers}, the first
    of which that offers a usable OTHER-ADDRESS is used; without one, what
    the plain answers show (mapping consistency across servers) is reported
    and filtering is C{UNKNOWN}.

    @param reactor: opens the sockets, and must also provide C{IReactorTime}
        (a real reactor, or a host of L{twisted_nat.testing}'s simulated
        internet).
    @param interface: the local address to bind (the wildcard by default).
    @param timeout: how long the first contact with a server may take.
    @param min_window: the shortest "no answer" window, in seconds.
    @param max_window: the longest, used when the round trip is unknown.
    @param window_rtts: the window is this many measured round trips.
    @param first_contact: the schedule of the first request to each server;
        faster than RFC 8489's 500 ms start, since discovery is interactive.
    @param resolver: resolves server host names (the reactor's by default).
    @param second_look: measure the port step again on L{STEP_FLOWS} flows
        opened at once when the mapping tests' ports do not look sequential.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorUDP,
        servers: Sequence[Address],
        interface: str = "0.0.0.0",
        timeout: float = 5.0,
        min_window: float = 0.15,
        max_window: float = 2.0,
        window_rtts: float = 10.0,
        first_contact: RetransmissionSchedule | None = None,
        resolver: Resolver | None = None,
        second_look: bool = True,
    ) -> None:
        if not servers:
            raise ConfigurationError("behaviour discovery needs at least one STUN server")
        self._reactor = reactor
        self._clock = IReactorTime(reactor)
        self._servers = list(servers)
        self._interface = interface
        self._timeout = timeout
        self._min_window = min_window
        self._max_window = max_window
        self._window_rtts = window_rtts
        self._first_contact = first_contact or RetransmissionSchedule(rto=0.2)
        self._resolver = resolver
        self._second_look = second_look

    def run(self) -> Deferred[NATBehavior]:
        return Deferred.fromCoroutine(self._run())

    # --- sockets ---

    def _open(self, hairpin: bool) -> _Socket:
        client = STUNClient(reactor=self._clock, schedule=self._first_contact, software=None)
        listener = HairpinListener() if hairpin else None
        mux = UDPMultiplexer()
        try:
            # IReactorUDP names DatagramProtocol; any AbstractDatagramProtocol does.
            port = self._reactor.listenUDP(0, mux, self._interface, 8192)  # type: ignore[arg-type]
        except CannotListenError as e:
            raise ConfigurationError(f"cannot bind {self._interface}: {e.socketError}") from None
        mux.add_stun(client, [Method.BINDING], [MessageClass.SUCCESS, MessageClass.ERROR])
        if listener is not None:
            mux.add_stun(listener, [Method.BINDING], [MessageClass.REQUEST])
        return _Socket(client, port, listener)

    def _local_endpoint(self, sock: _Socket, server: Address) -> Address | None:
        host = sock.port.getHost()
        bound, port = host.host, host.port  # type: ignore[attr-defined]
        if bound not in _WILDCARDS:
            return (bound, port)
        # A reactor that is not the real network (the simulated internet)
        # answers the routing question itself.
        routing = getattr(self._reactor, "route_source", route_source)
        source = routing(server[0])
        return None if source is None else (source, port)

    # --- the run ---

    async def _run(self) -> NATBehavior:
        started = self._clock.seconds()
        resolver = STUNClient(reactor=self._clock, resolver=self._resolver)
        servers: list[Address] = []
        failures: dict[Address, BaseException] = {}
        for server in self._servers:
            try:
                servers.append(await resolver.resolve(server))
            except Exception as e:
                failures[server] = e
        if not servers:
            raise DiscoveryError(failures)
        mapping_socket = self._open(hairpin=True)
        try:
            filtering_socket = self._open(hairpin=False)
        except BaseException:
            await maybeDeferred(mapping_socket.port.stopListening)
            raise
        try:
            behavior = await self._discover(servers, mapping_socket, filtering_socket)
        finally:
            await maybeDeferred(mapping_socket.port.stopListening)
            await maybeDeferred(filtering_socket.port.stopListening)
        behavior = attrs.evolve(behavior, elapsed=self._clock.seconds() - started)
        self.log.debug(
            "NAT behaviour towards {server}: {nat_type} ({mapping} mapping, {filtering} "
            "filtering) in {elapsed:.3f}s; problems: {problems}",
            server=behavior.server,
            nat_type=behavior.nat_type.value,
            mapping=behavior.mapping.value,
            filtering=behavior.filtering.value,
            elapsed=behavior.elapsed,
            problems=behavior.problems,
        )
        return behavior

    async def _first_contacts(
        self, server: Address, mapping: _Socket, filtering: _Socket
    ) -> tuple[Outcome, Outcome]:
        """
        Test I from both sockets at once.  When loss took every transmission
        of one while the other was answered, the server is there: that one
        asks again, paced by the answer's round trip, rather than report UDP
        blocked (or filtering unknown) for a server that answers.
        """
        sockets = (mapping, filtering)
        outcomes = await gatherResults(
            [
                Deferred.fromCoroutine(
                    _settle(sock.client.request(request(), server, deadline=self._timeout))
                )
                for sock in sockets
            ]
        )
        answered = [o for o in outcomes if isinstance(o, Response)]
        if len(answered) == 1:
            within = RetransmissionSchedule.within(self._window(answered[0].rtt))
            for i, (outcome, sock) in enumerate(zip(outcomes, sockets, strict=True)):
                if isinstance(outcome, STUNTimeout):
                    outcomes[i] = await _settle(
                        sock.client.request(request(), server, schedule=within)
                    )
        return outcomes[0], outcomes[1]

    async def _discover(
        self, servers: list[Address], mapping: _Socket, filtering: _Socket
    ) -> NATBehavior:
        problems: list[str] = []
        answers: dict[Address, Response] = {}
        for server in servers:
            first, filtered_first = await self._first_contacts(server, mapping, filtering)
            if isinstance(first, Exception):
                problems.append(f"{format_address(server)}: {first}")
                continue
            answers[server] = first
            other = usable_other_address(first, server)
            problems.extend(other.problems)
            if other.value is None:
                continue
            second: Response | None = None
            if isinstance(filtered_first, Exception):
                problems.append(
                    f"second socket got no answer from {format_address(server)}: {filtered_first}"
                )
            else:
                second = filtered_first
            behavior = await self._rfc5780(server, other.value, first, second, mapping, filtering)
            break
        else:
            behavior = self._without_rfc5780(servers, answers, mapping)
        return attrs.evolve(behavior, problems=(*problems, *behavior.problems))

    def _window(self, rtt: float | None) -> float:
        if rtt is None:
            return self._max_window
        return min(self._max_window, max(self._min_window, rtt * self._window_rtts))

    async def _rfc5780(
        self,
        server: Address,
        other: Address,
        first: Response,
        filtered_first: Response | None,
        mapping: _Socket,
        filtering: _Socket,
    ) -> NATBehavior:
        rtt = min([first.rtt] + ([filtered_first.rtt] if filtered_first is not None else []))
        window = self._window(rtt)
        within = RetransmissionSchedule.within(window)
        public = first.mapped_address
        assert mapping.hairpin is not None

        def ask(
            client: STUNClient, target: Address, change: ChangeRequest | None = None
        ) -> Deferred[Outcome]:
            message = request(attributes=[change] if change is not None else [])
            return Deferred.fromCoroutine(
                _settle(client.request(message, target, schedule=within, match_source=False))
            )

        # Everything below runs at once: the mapping tests and the hairpin
        # probe on one binding, the filtering tests on the other.
        mapping_tests = gatherResults(
            [ask(mapping.client, (other[0], server[1])), ask(mapping.client, other)]
        )
        filtering_tests = gatherResults(
            [
                ask(filtering.client, server, ChangeRequest(True, True)),
                ask(filtering.client, server, ChangeRequest(False, True)),
            ]
            if filtered_first is not None
            else []
        )
        hairpin: Deferred[bool | None] = (
            mapping.hairpin.probe(self._clock, public, window)  # type: ignore[assignment]
            if public is not None
            else succeed(None)
        )
        to_alternate_port, to_alternate = await mapping_tests
        filtering_results = await filtering_tests
        hairpinning = await hairpin
        mapped = mapping_behavior(server, other, public, to_alternate_port, to_alternate)
        step: Finding[int | None] = Finding(mapped.port_delta)
        if self._second_look and mapped.wants_second_look:
            step = await self._step(server, within)
        filtered = (
            filtering_behavior(server, other, *filtering_results)
            if filtering_results
            else Finding(FilteringBehavior.UNKNOWN)
        )
        return NATBehavior(
            local=self._local_endpoint(mapping, server),
            public=public,
            mapping=mapped.mapping,
            port_delta=step.value,
            filtering=filtered.value,
            hairpinning=hairpinning,
            server=server,
            other_address=other,
            rtt=rtt,
            problems=mapped.problems + step.problems + filtered.problems,
        )

    async def _step(self, server: Address, within: RetransmissionSchedule) -> Finding[int | None]:
        """
        The allocation step, measured again on L{STEP_FLOWS} new flows
        opened at the same moment: flows opened together are interleaved
        with few others' on a busy NAT.
        """
        sockets: list[_Socket] = []
        try:
            for _ in range(STEP_FLOWS):
                sockets.append(self._open(hairpin=False))
            outcomes = await gatherResults(
                [
                    Deferred.fromCoroutine(
                        _settle(sock.client.request(request(), server, schedule=within))
                    )
                    for sock in sockets
                ]
            )
        except ConfigurationError as e:
            return Finding(None, (f"no second look at the port sequence: {e}",))
        finally:
            for sock in sockets:
                await maybeDeferred(sock.port.stopListening)
        ports = [
            o.mapped_address[1]
            for o in outcomes
            if isinstance(o, Response) and o.mapped_address is not None
        ]
        return Finding(port_delta(ports) if len(ports) == STEP_FLOWS else None)

    def _without_rfc5780(
        self, servers: list[Address], answers: dict[Address, Response], mapping: _Socket
    ) -> NATBehavior:
        """
        No server offered RFC 5780: report what the plain answers show
        (L{mapping_across_servers}); filtering stays unknown.
        """
        server = servers[0]
        if not answers:
            return NATBehavior(
                local=self._local_endpoint(mapping, server),
                public=None,
                mapping=MappingBehavior.UNKNOWN,
                filtering=FilteringBehavior.UNKNOWN,
                hairpinning=None,
                server=server,
            )
        first_server, first = next(iter(answers.items()))
        found = mapping_across_servers(answers)
        return NATBehavior(
            local=self._local_endpoint(mapping, first_server),
            public=first.mapped_address,
            mapping=found.value,
            filtering=FilteringBehavior.UNKNOWN,
            hairpinning=None,
            server=first_server,
            rtt=min(r.rtt for r in answers.values()),
            problems=found.problems,
        )


def detect_nat(
    reactor: IReactorUDP,
    servers: Sequence[Address],
    interface: str = "0.0.0.0",
    lifetime: bool = False,
    **options: Any,
) -> Deferred[NATBehavior]:
    """
    Discover the NAT behaviour between this host and C{servers}.

    @param reactor: opens the sockets, and must also provide C{IReactorTime}
        (a real reactor, or a host of L{twisted_nat.testing}'s simulated
        internet).
    @param lifetime: also measure how long an idle binding lives
        (L{measure_binding_lifetime}); this takes minutes on real NATs.
    @param options: the tuning keywords of L{BehaviorDiscovery}.
    @return: a Deferred firing with a L{NATBehavior}; failing with
        L{DiscoveryError} only when no server name resolves.
    """
    discovery = BehaviorDiscovery(reactor, servers, interface, **options)
    if not lifetime:
        return discovery.run()

    async def with_lifetime() -> NATBehavior:
        behavior = await discovery.run()
        if not behavior.nat_present:
            return behavior  # no NAT, no binding to time (or no answer at all)
        alive, _ = await measure_binding_lifetime(reactor, behavior.server, interface)
        return attrs.evolve(behavior, binding_lifetime=alive)

    return Deferred.fromCoroutine(with_lifetime())
