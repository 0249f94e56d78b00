"""
Relays: a TURN allocation on each configured server, each one more base of
every punch and one more candidate we offer.  A relay is used only for the
peers no direct path reaches; a server that cannot be reached, or refuses,
costs a warning, not the service, and is asked again later.

With an IPv6 socket, a server is also asked for an IPv6 relayed address
(REQUESTED-ADDRESS-FAMILY, RFC 8656), for the peers' IPv6 candidates:
over the IPv6 socket for UDP, over a stream of its own for TCP and TLS.  A
server named by an IPv4 literal is asked for IPv4 only, one named by an
IPv6 literal for IPv6 only, and one that has no IPv6 relays (440) is not
asked again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from twisted.application.internet import backoffPolicy
from twisted.internet.abstract import isIPAddress
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.address import Address, family_of, format_address
from twisted_nat.bases import Base, BaseRegistry, relay_base
from twisted_nat.candidates import Candidate, CandidateType, rank
from twisted_nat.errors import TURNAllocationClosed, TURNError, TwistedNATError
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.punch import RELAY_PAIRED_KINDS
from twisted_nat.service.addresses import Addresses
from twisted_nat.service.waiting import within
from twisted_nat.stun.client import STUNClient
from twisted_nat.turn import Allocation, TURNClient, TURNServer, connect_stream

MAX_PERMITTED = 4
"""Hosts a relay is opened to for one peer whose address nobody vouched for."""

RELAY_WAIT = 5.0
"""
How long start-up waits for the relays before registering: an offer made
without the relayed candidate cannot use the relay, but a TURN server that
does not answer would hold the start for the whole of STUN's
retransmissions.  A relay that comes later is offered from then on.
"""

FAMILY_NOT_SUPPORTED = 440
"""TURN's error code for a relayed address family the server does not offer."""

VERIFY_WAIT = 2.0
"""How long L{Relays.verify} is waited for: a TURN server that does not answer is not."""

RETRY = backoffPolicy(initialDelay=5.0, maxDelay=300.0, factor=2.0, jitter=lambda: 0.0)
"""Pauses between attempts to get a relay again after an allocation failed or ended."""


class Relays:
    """
    The allocations of one service, each held with the server it is on.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        servers: Sequence[TURNServer],
        bases: BaseRegistry,
        addresses: Addresses,
        running: Callable[[], bool],
    ) -> None:
        self._reactor = reactor
        self._servers = list(servers)
        self._bases = bases
        self._addresses = addresses
        self._running = running
        self._held: dict[Base, tuple[Allocation, TURNServer]] = {}
        self._udp: TURNClient | None = None
        self._udp6: TURNClient | None = None
        self._ipv6 = False
        self._streams: list[TURNClient] = []
        self._retries: dict[tuple[TURNServer, int], IDelayedCall] = {}

    @property
    def allocations(self) -> dict[Base, Allocation]:
        """The live allocations, by their base."""
        return {base: allocation for base, (allocation, _) in self._held.items()}

    def attach(self, mux: UDPMultiplexer, stun: STUNClient) -> None:
        """Allocate over the shared socket too (for C{turn:...?transport=udp} servers)."""
        if any(server.transport == "udp" for server in self._servers):
            self._udp = TURNClient.on_multiplexer(mux, self._reactor, stun=stun)

    def attach6(self, mux: UDPMultiplexer, stun: STUNClient) -> None:
        """Allocate IPv6 relayed addresses over the IPv6 socket too."""
        self._ipv6 = True
        if any(server.transport == "udp" for server in self._servers):
            self._udp6 = TURNClient.on_multiplexer(mux, self._reactor, stun=stun)

    def families(self, server: TURNServer) -> list[int]:
        """The families of relayed address to ask C{server} for."""
        if ":" in server.host:
            return [6] if self._ipv6 else []
        if isIPAddress(server.host) or not self._ipv6:
            return [4]
        return [4, 6]

    def start(self) -> Deferred[None]:
        """Allocate on every server; fires when all answered, or after L{RELAY_WAIT}."""
        allocating = DeferredList(
            [
                Deferred.fromCoroutine(self._allocate(server, 0, family))
                for server in self._servers
                for family in self.families(server)
            ]
        )
        return within(self._reactor, allocating, RELAY_WAIT)

    @property
    def streams(self) -> list[TURNClient]:
        """The TURN clients on a stream (TCP or TLS) open now."""
        return list(self._streams)

    @property
    def retrying(self) -> list[TURNServer]:
        """The servers to be asked again later (for one family or both)."""
        return list(dict.fromkeys(server for server, _ in self._retries))

    def relayed_addresses(self) -> list[Address]:
        return [a.relayed_address for a in self.allocations.values() if a.active]

    async def _allocate(self, server: TURNServer, attempt: int, family: int = 4) -> None:
        self._retries.pop((server, family), None)
        stream: TURNClient | None = None
        # REQUESTED-ADDRESS-FAMILY only for IPv6: without it a server relays IPv4.
        requested = 2 if family == 6 else None
        try:
            if server.transport == "udp":
                client = self._udp6 if family == 6 else self._udp
                assert client is not None
                allocation = await client.allocate(
                    (server.host, server.port), server.username, server.password, family=requested
                )
            else:
                stream = await connect_stream(self._reactor, server.endpoint())
                self._streams.append(stream)
                allocation = await stream.allocate(
                    None, server.username, server.password, family=requested
                )
        except (TwistedNATError, DNSLookupError) as e:
            if stream is not None:
                self._streams.remove(stream)
                stream.close()
            if not self._running():  # stopping cancels an allocation under way: nothing to say
                return
            if family == 6 and isinstance(e, TURNError) and e.code == FAMILY_NOT_SUPPORTED:
                self.log.info("{server} relays no IPv6", server=server.uri())
                return
            self.log.warn(
                "no {family}relay on {server}: {error}",
                family="IPv6 " if family == 6 else "",
                server=server.uri(),
                error=e,
            )
            self._retry(server, attempt, family)
            return
        if not self._running():
            allocation.close()
            return
        base = relay_base(allocation.relayed_address)
        relay_mux = UDPMultiplexer()
        allocation.attach(relay_mux)
        self._bases.add(base, relay_mux)
        self._held[base] = (allocation, server)
        self._addresses.add(Candidate(CandidateType.RELAYED, *allocation.relayed_address))
        self.log.info(
            "relayed candidate {relayed} on {server}",
            relayed=format_address(allocation.relayed_address),
            server=server.uri(),
        )
        allocation.lost.addCallback(self._lost, server, base)

    def _lost(self, reason: TURNError, server: TURNServer, base: Base) -> None:
        held = self._held.pop(base, None)
        self._bases.remove(base)
        if held is not None:
            self._addresses.remove(held[0].relayed_address)
        if isinstance(reason, TURNAllocationClosed) or not self._running():
            return
        self.log.warn("{relay} lost: {reason}", relay=base, reason=reason)
        self._retry(server, 0, base.family)

    def verify(self) -> Deferred[None]:
        """
        After a lost path: refresh every allocation now.  One the server no
        longer keeps for us (a NAT that lost its bindings moved us to a new
        port: 437, allocation mismatch; or a stream that was reset) is made
        again at once, not after L{RETRY}'s first pause, so that the next
        offer carries a relayed candidate that works.  Fires when all are
        done, or after L{VERIFY_WAIT}.
        """
        checks = [
            Deferred.fromCoroutine(self._verify(base, allocation, server))
            for base, (allocation, server) in list(self._held.items())
        ]
        return within(self._reactor, DeferredList(checks), VERIFY_WAIT)

    async def _verify(self, base: Base, allocation: Allocation, server: TURNServer) -> None:
        try:
            await allocation.refresh()
        except TwistedNATError:  # lost, and logged: _lost scheduled a new allocation
            retry = self._retries.get((server, base.family))
            if retry is None or not self._running():
                return
            if retry.active():
                retry.cancel()
            await self._allocate(server, 0, base.family)

    def _retry(self, server: TURNServer, attempt: int, family: int) -> None:
        if not self._running():
            return
        self._retries[(server, family)] = self._reactor.callLater(
            RETRY(attempt),
            lambda: Deferred.fromCoroutine(self._allocate(server, attempt + 1, family)),
        )

    def permit(self, remote: Sequence[Candidate], seen_from: str | None = None) -> None:
        """
        Let the peer's public addresses reach our relays before punching:
        a TURN server drops what comes from an address without permission.
        Only addresses the peer can be shown to hold: its relays, and the
        address the rendezvous saw it connect from (C{seen_from}); without
        that word, the first L{MAX_PERMITTED} of its claims.  A stranger's
        offer naming many addresses would otherwise open our relay to all.
        """
        public = [c for c in rank(list(remote)) if c.kind in RELAY_PAIRED_KINDS]
        if seen_from is not None:
            public = [c for c in public if c.kind is CandidateType.RELAYED or c.host == seen_from]
        hosts = list(dict.fromkeys(c.host for c in public))[:MAX_PERMITTED]
        for base, allocation in self.allocations.items():
            # A relay reaches addresses of its own family only (else 443).
            mine = [host for host in hosts if family_of(host) == base.family]
            if mine:
                allocation.create_permission(*mine).addErrback(self._not_permitted, base)

    def _not_permitted(self, failure: Failure, relay: Base) -> None:
        if self._running():  # stopping cancels what is still asked, and nobody needs to know
            self.log.warn("no permission on {relay}: {error}", relay=relay, error=failure.value)

    def bind_channel(self, base: Base, peer: Address, name: str | None) -> None:
        """
        A channel to C{peer} on the relay C{base}, if it is one: a channel
        costs 4 bytes a datagram, where a Send indication costs 36.
        """
        held = self._held.get(base)
        allocation = held[0] if held is not None else None
        if allocation is not None and allocation.active:
            allocation.bind_channel(peer).addErrback(
                lambda failure: self.log.info(
                    "no channel to {peer}: {error}", peer=name, error=failure.value
                )
            )

    def stop(self) -> None:
        for retry in self._retries.values():
            if retry.active():
                retry.cancel()
        self._retries.clear()
        for allocation in list(self.allocations.values()):
            # Deallocation is sent at once; nobody waits for its answer,
            # since the server frees an allocation that expires anyway.
            allocation.close()
        for stream in self._streams:
            stream.close()
        self._streams.clear()
