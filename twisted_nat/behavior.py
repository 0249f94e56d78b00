"""
NAT behaviour discovery (RFC 5780): what NAT am I behind, and can I be reached?

The answer is one immutable L{NATBehavior}: the public and local endpoints,
the mapping and filtering behaviours, hairpinning, and the classic name
users know, derived from the rest by L{classify}, the one place the names
are defined.

Two sockets are used, because the filtering tests must run on a binding
that has only ever sent to the server's primary address, while the mapping
tests send to the alternate one.  Tests that can run at once do, and "no
answer" is decided inside a window derived from the measured round trip
(with evenly spaced retransmissions inside it to survive loss), not after
RFC 8489's 39.5 seconds; the whole discovery takes a few round trips plus
one window.

The server is never trusted blindly: OTHER-ADDRESS must differ from the
primary address in both address and port, and each CHANGE-REQUEST answer
must come from the address and port it asked for.  A server that fails
either is reported in L{NATBehavior.problems}, and the behaviour it could
not measure is C{UNKNOWN}, never a guess.
"""

from __future__ import annotations

import enum
import itertools
import math
import socket
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from twisted_nat.address import format_address
from twisted_nat.errors import (
    ConfigurationError,
    DiscoveryError,
    STUNErrorResponse,
    STUNTimeout,
    TwistedNATError,
)
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.stun.attributes import ChangeRequest, ResponsePort
from twisted_nat.stun.client import Resolver, Response, RetransmissionSchedule, STUNClient
from twisted_nat.stun.message import MessageClass, Method, decode, encode, request

Address = tuple[str, int]

_WILDCARDS = ("", "0.0.0.0", "::")


class MappingBehavior(enum.Enum):
    """How the NAT picks the public endpoint (RFC 4787 section 4.1)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    DESTINATION_DEPENDENT = "destination-dependent"
    """Not endpoint-independent; which of the two dependent kinds was not told apart."""
    UNKNOWN = "unknown"


class FilteringBehavior(enum.Enum):
    """What inbound traffic the NAT lets through (RFC 4787 section 5)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UNKNOWN = "unknown"


class NATType(enum.Enum):
    """The classic names (RFC 3489's, and what users ask about)."""

    OPEN_INTERNET = "open internet"
    FIREWALLED = "no NAT, firewalled"
    NO_NAT = "no NAT (filtering unknown)"
    FULL_CONE = "full cone"
    RESTRICTED_CONE = "restricted cone"
    PORT_RESTRICTED_CONE = "port-restricted cone"
    CONE = "cone NAT (filtering unknown)"
    SYMMETRIC = "symmetric"
    UDP_BLOCKED = "UDP blocked"
    UNKNOWN = "unknown"


_CONE_BY_FILTERING = {
    FilteringBehavior.ENDPOINT_INDEPENDENT: NATType.FULL_CONE,
    FilteringBehavior.ADDRESS_DEPENDENT: NATType.RESTRICTED_CONE,
    FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT: NATType.PORT_RESTRICTED_CONE,
    FilteringBehavior.UNKNOWN: NATType.CONE,
}


def classify(
    answered: bool,
    nat_present: bool | None,
    mapping: MappingBehavior,
    filtering: FilteringBehavior,
) -> NATType:
    """
    The one rule from measured behaviour to classic name.

        no answer from any server                 -> UDP blocked
        no NAT, filtering endpoint-independent    -> open internet
        no NAT, filtering (address-)dependent     -> no NAT, firewalled
        no NAT, filtering unknown                 -> no NAT (filtering unknown)
        NAT, mapping endpoint-independent, and filtering
            endpoint-independent                  -> full cone
            address-dependent                     -> restricted cone
            address-and-port-dependent            -> port-restricted cone
            unknown                               -> cone NAT (filtering unknown)
        NAT, mapping dependent on the destination -> symmetric
        anything else                             -> unknown
    """
    if not answered:
        return NATType.UDP_BLOCKED
    if nat_present is False:
        if filtering is FilteringBehavior.ENDPOINT_INDEPENDENT:
            return NATType.OPEN_INTERNET
        if filtering is FilteringBehavior.UNKNOWN:
            return NATType.NO_NAT
        return NATType.FIREWALLED
    if nat_present is None:
        return NATType.UNKNOWN
    if mapping is MappingBehavior.ENDPOINT_INDEPENDENT:
        return _CONE_BY_FILTERING[filtering]
    if mapping is MappingBehavior.UNKNOWN:
        return NATType.UNKNOWN
    return NATType.SYMMETRIC


@attrs.frozen
class NATBehavior:
    """
    Everything discovery found, as one value.

    @ivar local: the local endpoint actually used to reach the server (the
        routing decision, not the wildcard the socket was bound to).
    @ivar public: the server-reflexive endpoint of that socket, or None
        when no server answered.
    @ivar hairpinning: whether a packet sent to our own public endpoint
        came back; None when not tested.
    @ivar rtt: the round trip to the server, in seconds.
    @ivar elapsed: how long discovery took, in seconds.
    @ivar binding_lifetime: how long an idle binding survived, when
        measured (L{measure_binding_lifetime}).
    @ivar port_delta: for a NAT whose mapping depends on the destination,
        the step between the public ports it gave successive new flows,
        when they were close together (sequential allocation: the next
        port can be predicted); None when they looked random.
    @ivar problems: what went wrong with the server or the path, in words.
    """

    local: Address | None
    public: Address | None
    mapping: MappingBehavior
    filtering: FilteringBehavior
    hairpinning: bool | None
    server: Address
    other_address: Address | None = None
    rtt: float | None = None
    elapsed: float = 0.0
    binding_lifetime: float | None = None
    port_delta: int | None = None
    problems: tuple[str, ...] = ()

    @property
    def nat_present(self) -> bool | None:
        if self.public is None or self.local is None:
            return None
        return self.public != self.local

    @property
    def nat_type(self) -> NATType:
        return classify(self.public is not None, self.nat_present, self.mapping, self.filtering)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary (what C{twisted-nat detect --json} prints)."""

        def endpoint(address: Address | None) -> str | None:
            return None if address is None else format_address(address)

        return {
            "nat_type": self.nat_type.value,
            "nat_present": self.nat_present,
            "public": endpoint(self.public),
            "local": endpoint(self.local),
            "mapping": self.mapping.value,
            "filtering": self.filtering.value,
            "hairpinning": self.hairpinning,
            "server": endpoint(self.server),
            "other_address": endpoint(self.other_address),
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "elapsed_ms": round(self.elapsed * 1000, 3),
            "binding_lifetime_s": self.binding_lifetime,
            "port_delta": self.port_delta,
            "problems": list(self.problems),
        }

    def describe(self) -> str:
        """A few lines a person can read."""

        def endpoint(address: Address | None) -> str:
            return "unknown" if address is None else format_address(address)

        hairpin = {True: "yes", False: "no", None: "not tested"}[self.hairpinning]
        lines = [
            f"NAT type:     {self.nat_type.value}",
            f"public:       {endpoint(self.public)}",
            f"local:        {endpoint(self.local)}",
            f"mapping:      {self.mapping.value}",
            f"filtering:    {self.filtering.value}",
            f"hairpinning:  {hairpin}",
            f"server:       {endpoint(self.server)} (other address {endpoint(self.other_address)})",
        ]
        if self.binding_lifetime is not None:
            lines.append(f"binding life: {self.binding_lifetime:.1f} s")
        if self.rtt is not None:
            lines.append(f"round trip:   {self.rtt * 1000:.1f} ms")
        lines.append(f"took:         {self.elapsed * 1000:.0f} ms")
        lines.extend(f"problem:      {problem}" for problem in self.problems)
        return "\n".join(lines)


PREDICTABLE_SPREAD = 256
"""
Public ports of successive new flows within this many of each other look
sequential.  Generous, since a busy NAT gives other hosts' flows the ports
in between (twenty peers discovering at once behind one lab NAT put up to
~200 between ours); three random ports fall within two such gaps of each
other, in some order, about once in 10,000 discoveries (6 (256 / 64512)^2).
"""


STEP_FLOWS = 3
"""New flows opened at once for a second look at a NAT's port sequence."""

_NEW_PORT_PER_DESTINATION = frozenset(
    {MappingBehavior.ADDRESS_DEPENDENT, MappingBehavior.ADDRESS_AND_PORT_DEPENDENT}
)


def port_delta(ports: Sequence[int]) -> int | None:
    """
    The allocation step of a NAT that gave these public ports to new flows
    opened one after the other, if they look sequential: distinct and close
    together, in any order (a flow whose first datagram was lost takes its
    port when the retransmission passes, after a later flow's).  Other
    hosts' flows may take ports in between, each a whole step, so the step
    is the greatest common divisor of the gaps rather than the smallest
    (gaps of 5 and 9 are steps of 1, not of 5).  None when they look random.
    """
    if len(ports) < 2 or len(set(ports)) != len(ports):
        return None
    gaps = [b - a for a, b in itertools.pairwise(sorted(ports))]
    if any(gap <= 0 or gap > PREDICTABLE_SPREAD for gap in gaps):
        return None
    return math.gcd(*gaps)


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


class _HairpinListener(DatagramProtocol):
    """
    Receives Binding requests on the mapping socket: one of ours coming
    back through the NAT's public address proves hairpinning.
    """

    noisy = False

    def __init__(self) -> None:
        self._waiting: dict[bytes, Deferred[bool]] = {}

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        try:
            message = decode(datagram)
        except TwistedNATError:
            return
        waiting = self._waiting.pop(message.transaction_id, None)
        if waiting is not None:
            waiting.callback(True)

    def probe(self, reactor: Any, target: Address, window: float, sends: int = 7) -> Deferred[bool]:
        """Send a Binding request to C{target} until it comes back or C{window} passes."""
        assert self.transport is not None
        transport = self.transport
        data = encode(request())
        tid = data[8:20]
        result: Deferred[bool] = Deferred()
        self._waiting[tid] = result
        step = window / (sends + 1)
        calls = [reactor.callLater(i * step, transport.write, data, target) for i in range(sends)]

        def give_up() -> None:
            if self._waiting.pop(tid, None) is not None:
                result.callback(False)

        calls.append(reactor.callLater(window, give_up))

        def cancel_timers(outcome: bool) -> bool:
            for call in calls:
                if call.active():
                    call.cancel()
            return outcome

        return result.addBoth(cancel_timers)


async def _settle(d: Deferred[Response]) -> Response | Exception:
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
    hairpin: _HairpinListener | None = None


class BehaviorDiscovery:
    """
    One run of RFC 5780 behaviour discovery against C{servers}, the first
    of which that offers a usable OTHER-ADDRESS is used; without one, what
    the plain answers show (mapping consistency across servers) is reported
    and filtering is C{UNKNOWN}.

    @param reactor: provides C{IReactorUDP} and C{IReactorTime} (a real
        reactor, or a host of L{twisted_nat.testing}'s simulated internet).
    @param interface: the local address to bind (the wildcard by default).
    @param timeout: how long the first contact with a server may take.
    @param min_window: the shortest "no answer" window, in seconds.
    @param max_window: the longest, used when the round trip is unknown.
    @param window_rtts: the window is this many measured round trips.
    @param first_contact: the schedule of the first request to each server;
        faster than RFC 8489's 500 ms start, since discovery is interactive.
    @param resolver: resolves server host names (the reactor's by default).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        servers: Sequence[Address],
        interface: str = "0.0.0.0",
        timeout: float = 5.0,
        min_window: float = 0.15,
        max_window: float = 2.0,
        window_rtts: float = 10.0,
        first_contact: RetransmissionSchedule | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        if not servers:
            raise ConfigurationError("behaviour discovery needs at least one STUN server")
        self._reactor = reactor
        self._servers = list(servers)
        self._interface = interface
        self._timeout = timeout
        self._min_window = min_window
        self._max_window = max_window
        self._window_rtts = window_rtts
        self._first_contact = first_contact or RetransmissionSchedule(rto=0.2)
        self._resolver = resolver
        self._problems: list[str] = []
        self._port_delta: int | None = None

    def run(self) -> Deferred[NATBehavior]:
        return Deferred.fromCoroutine(self._run())

    # --- sockets ---

    def _open(self, hairpin: bool) -> _Socket:
        client = STUNClient(reactor=self._reactor, schedule=self._first_contact, software=None)
        listener = _HairpinListener() if hairpin else None
        mux = UDPMultiplexer()
        try:
            port = self._reactor.listenUDP(0, mux, interface=self._interface)
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
        started = self._reactor.seconds()
        self._problems = []
        self._port_delta = None
        resolver = STUNClient(reactor=self._reactor, resolver=self._resolver)
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
            await _stop(mapping_socket.port)
            raise
        try:
            behavior = await self._discover(servers, mapping_socket, filtering_socket)
        finally:
            await _stop(mapping_socket.port)
            await _stop(filtering_socket.port)
        behavior = attrs.evolve(
            behavior,
            elapsed=self._reactor.seconds() - started,
            problems=tuple(self._problems),
        )
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

    def _first(self, sock: _Socket, server: Address) -> Deferred[Response]:
        return sock.client.request(request(), server, deadline=self._timeout)

    async def _discover(
        self, servers: list[Address], mapping: _Socket, filtering: _Socket
    ) -> NATBehavior:
        answers: dict[Address, Response] = {}
        for server in servers:
            first, filtered_first = await gatherResults(
                [
                    Deferred.fromCoroutine(_settle(self._first(mapping, server))),
                    Deferred.fromCoroutine(_settle(self._first(filtering, server))),
                ]
            )
            if isinstance(first, Exception):
                self._problems.append(f"{format_address(server)}: {first}")
                continue
            answers[server] = first
            other = self._usable_other_address(first, server)
            if other is None:
                continue
            second: Response | None = None
            if isinstance(filtered_first, Exception):
                self._problems.append(
                    f"second socket got no answer from {format_address(server)}: {filtered_first}"
                )
            else:
                second = filtered_first
            return await self._rfc5780(server, other, first, second, mapping, filtering)
        return self._without_rfc5780(servers, answers, mapping)

    def _usable_other_address(self, first: Response, server: Address) -> Address | None:
        other = first.other_address
        name = format_address(server)
        origin = first.response_origin
        if origin is not None and origin != first.source:
            self._problems.append(
                f"{name}: RESPONSE-ORIGIN {format_address(origin)} but the answer came from "
                f"{format_address(first.source)}"
            )
        if other is None:
            self._problems.append(f"{name} offers no OTHER-ADDRESS (not an RFC 5780 server)")
            return None
        if other[0] == server[0] or other[1] == server[1]:
            self._problems.append(
                f"{name}: OTHER-ADDRESS {format_address(other)} does not differ from the "
                "primary address in both address and port"
            )
            return None
        return other

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
        ) -> Deferred[Response | Exception]:
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
            mapping.hairpin.probe(self._reactor, public, window)  # type: ignore[assignment]
            if public is not None
            else Deferred.fromCoroutine(_none())
        )
        to_alternate_port, to_alternate = await mapping_tests
        filtering_results = await filtering_tests
        hairpinning = await hairpin
        behavior_mapping = self._mapping(server, other, public, to_alternate_port, to_alternate)
        if self._port_delta is None and behavior_mapping in _NEW_PORT_PER_DESTINATION:
            self._port_delta = await self._step(server, within)
        return NATBehavior(
            local=self._local_endpoint(mapping, server),
            public=public,
            mapping=behavior_mapping,
            port_delta=self._port_delta,
            filtering=(
                self._filtering(server, other, *filtering_results)
                if filtering_results
                else FilteringBehavior.UNKNOWN
            ),
            hairpinning=hairpinning,
            server=server,
            other_address=other,
            rtt=rtt,
        )

    async def _step(self, server: Address, within: RetransmissionSchedule) -> int | None:
        """
        The allocation step, measured again on L{STEP_FLOWS} new flows
        opened at the same moment, when the mapping tests' ports did not
        look sequential.  Those tests open their flows a round trip or
        more apart (more, when a datagram is lost), and on a busy NAT
        hundreds of other flows can take ports in between; flows opened
        together are interleaved with only a few.  A NAT with random ports
        passes this look as rarely as the first (about once in 10,000), so
        the two together call it sequential about once in 5,000.
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
            self._problems.append(f"no second look at the port sequence: {e}")
            return None
        finally:
            for sock in sockets:
                await _stop(sock.port)
        ports = [
            o.mapped_address[1]
            for o in outcomes
            if isinstance(o, Response) and o.mapped_address is not None
        ]
        return port_delta(ports) if len(ports) == STEP_FLOWS else None

    def _mapping(
        self,
        server: Address,
        other: Address,
        public: Address | None,
        to_alternate_address: Response | Exception,
        to_alternate: Response | Exception,
    ) -> MappingBehavior:
        """
        RFC 5780 4.3: the same public endpoint towards the alternate
        address (test II) means endpoint-independent; otherwise the same
        towards the alternate address and port (test III) as towards the
        alternate address means address-dependent, else both-dependent.
        """
        second = self._mapped(to_alternate_address, (other[0], server[1]))
        if public is None or second is None:
            return MappingBehavior.UNKNOWN
        if second == public:
            return MappingBehavior.ENDPOINT_INDEPENDENT
        third = self._mapped(to_alternate, other)
        if third is None:
            return MappingBehavior.DESTINATION_DEPENDENT
        self._port_delta = port_delta([public[1], second[1], third[1]])
        if third == second:
            return MappingBehavior.ADDRESS_DEPENDENT
        return MappingBehavior.ADDRESS_AND_PORT_DEPENDENT

    def _mapped(self, outcome: Response | Exception, target: Address) -> Address | None:
        name = format_address(target)
        if isinstance(outcome, Exception):
            self._problems.append(f"no answer from {name}: {outcome}")
            return None
        if outcome.source != target:
            self._problems.append(
                f"the answer for {name} came from {format_address(outcome.source)}"
            )
            return None
        if outcome.mapped_address is None:
            self._problems.append(f"the answer from {name} has no mapped address")
        return outcome.mapped_address

    def _filtering(
        self,
        server: Address,
        other: Address,
        change_both: Response | Exception,
        change_port: Response | Exception,
    ) -> FilteringBehavior:
        """
        RFC 5780 4.4: an answer from the alternate address and port (test
        II) means endpoint-independent; failing that, an answer from the
        primary address on the alternate port (test III) means
        address-dependent; no answer to either, address-and-port-dependent.
        An answer from anywhere else means the server ignored CHANGE-REQUEST,
        and the filtering stays unknown.
        """
        both = self._changed_answer(change_both, other, server)
        if both is None:
            return FilteringBehavior.UNKNOWN
        if both:
            return FilteringBehavior.ENDPOINT_INDEPENDENT
        port = self._changed_answer(change_port, (server[0], other[1]), server)
        if port is None:
            return FilteringBehavior.UNKNOWN
        if port:
            return FilteringBehavior.ADDRESS_DEPENDENT
        return FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT

    def _changed_answer(
        self, outcome: Response | Exception, expected: Address, server: Address
    ) -> bool | None:
        """True: answered from C{expected}; False: no answer; None: the server misbehaved."""
        if isinstance(outcome, STUNTimeout):
            return False
        if isinstance(outcome, STUNErrorResponse):
            self._problems.append(
                f"{format_address(server)} refused CHANGE-REQUEST with {outcome.code} "
                f"({outcome.reason})"
            )
            return None
        if isinstance(outcome, Exception):
            self._problems.append(f"CHANGE-REQUEST failed: {outcome}")
            return None
        if outcome.source != expected:
            self._problems.append(
                f"{format_address(server)} ignored CHANGE-REQUEST: asked for an answer from "
                f"{format_address(expected)}, got one from {format_address(outcome.source)}"
            )
            return None
        return True

    def _without_rfc5780(
        self, servers: list[Address], answers: dict[Address, Response], mapping: _Socket
    ) -> NATBehavior:
        """
        No server offered RFC 5780: compare the public endpoints several
        servers saw for the one socket.  The same everywhere is
        endpoint-independent mapping (as far as these destinations show);
        different towards the same address on another port is
        address-and-port-dependent; different otherwise is
        destination-dependent.  Filtering cannot be seen this way.
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
        seen = {s: r.mapped_address for s, r in answers.items() if r.mapped_address is not None}
        if len(seen) < 2:
            verdict = MappingBehavior.UNKNOWN
            self._problems.append("one plain STUN server cannot show mapping or filtering")
        elif len(set(seen.values())) == 1:
            verdict = MappingBehavior.ENDPOINT_INDEPENDENT
        else:
            same_host_differs = any(
                a[0] == b[0] and seen[a] != seen[b] for a in seen for b in seen if a != b
            )
            verdict = (
                MappingBehavior.ADDRESS_AND_PORT_DEPENDENT
                if same_host_differs
                else MappingBehavior.DESTINATION_DEPENDENT
            )
        self._problems.append("filtering is unknown without an RFC 5780 server")
        return NATBehavior(
            local=self._local_endpoint(mapping, first_server),
            public=first.mapped_address,
            mapping=verdict,
            filtering=FilteringBehavior.UNKNOWN,
            hairpinning=None,
            server=first_server,
            rtt=min(r.rtt for r in answers.values()),
        )


class _LifetimeTarget(STUNClient):
    """
    The socket whose binding is timed: besides its own transactions, it
    watches for answers to requests another socket sent with RESPONSE-PORT
    pointing here, which arrive only while the binding lives.
    """

    def __init__(self, reactor: Any) -> None:
        super().__init__(reactor=reactor, software=None)
        self.awaited: dict[bytes, Deferred[bool]] = {}

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        waiting = self.awaited.pop(datagram[8:20], None) if len(datagram) >= 20 else None
        if waiting is None:
            super().datagramReceived(datagram, addr)
            return
        waiting.callback(True)


async def measure_binding_lifetime(
    reactor: Any,
    server: Address,
    interface: str = "0.0.0.0",
    first: float = 1.0,
    longest: float = 600.0,
    precision: float = 0.1,
    window: float = 0.5,
) -> tuple[float, float]:
    """
    How long the NAT keeps an idle UDP binding (RFC 5780 section 4.6).

    Socket X creates a binding towards C{server}; after X has been idle for
    T seconds, socket Y sends a Binding request carrying RESPONSE-PORT with
    X's public port, so the answer reaches X only while X's binding lives.
    T doubles from C{first} until the binding is found dead (or C{longest}
    is reached), then is bisected until the bounds are within C{precision}
    (relative).  After every probe X sends again, so each probe measures
    idleness from X's last outbound packet.  This takes about twice the
    lifetime, summed over the probes: it is a separate, long-running test.

    @return: a Deferred-compatible coroutine result, C{(alive, dead)}: the
        longest idle time the binding survived and the shortest it did not
        (C{dead} is C{inf} when it survived C{longest}).
    """
    target = _LifetimeTarget(reactor)
    prober = STUNClient(reactor=reactor, software=None)
    ports = [
        reactor.listenUDP(0, target, interface=interface),
        reactor.listenUDP(0, prober, interface=interface),
    ]
    schedule = RetransmissionSchedule.within(window)

    async def refresh() -> Address:
        response = await target.request(request(), server, schedule=RetransmissionSchedule(0.2))
        if response.mapped_address is None:
            raise DiscoveryError({server: ValueError("no mapped address in the answer")})
        return response.mapped_address

    async def survives(idle: float, public: Address) -> bool:
        await _sleep(reactor, idle)
        probe = request(attributes=[ResponsePort(public[1])])
        arrived: Deferred[bool] = Deferred()
        target.awaited[probe.transaction_id] = arrived
        sent = prober.request(probe, server, schedule=schedule)
        sent.addErrback(lambda failure: None)  # the answer goes to X, never to Y

        def give_up() -> None:
            if not arrived.called:
                arrived.callback(False)

        timer = reactor.callLater(window, give_up)
        alive = await arrived
        target.awaited.pop(probe.transaction_id, None)
        if timer.active():
            timer.cancel()
        sent.cancel()
        return alive

    try:
        public = await refresh()
        alive, dead = 0.0, float("inf")
        idle = first
        while dead == float("inf") and idle <= longest:
            if await survives(idle, public):
                alive = idle
                idle *= 2
            else:
                dead = idle
            public = await refresh()
        while dead != float("inf") and dead - alive > precision * max(alive, first):
            idle = (alive + dead) / 2
            if await survives(idle, public):
                alive = idle
            else:
                dead = idle
            public = await refresh()
        return alive, dead
    finally:
        for port in ports:
            await _stop(port)


def _sleep(reactor: Any, seconds: float) -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def _none() -> None:
    return None


async def _stop(port: IListeningPort) -> None:
    stopped = port.stopListening()
    if stopped is not None:
        await stopped


def detect_nat(
    reactor: Any,
    servers: Sequence[Address],
    interface: str = "0.0.0.0",
    lifetime: bool = False,
    **options: Any,
) -> Deferred[NATBehavior]:
    """
    Discover the NAT behaviour between this host and C{servers}.

    @param reactor: a reactor (C{IReactorUDP} and C{IReactorTime}), or a
        host of the simulated internet in L{twisted_nat.testing}.
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
