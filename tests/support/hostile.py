"""
A stranger's offer, and what it makes a peer on the simulated internet
spend: the datagrams it sends towards the addresses the offer named, and
the extra sockets it opens.  Shared by the attack tests and the benchmark.
"""

from __future__ import annotations

from typing import Any

import attrs

from tests.support.world import World, build_world, sockets_opened
from twisted_nat import testing as sim
from twisted_nat.address import Address
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.nat import FilteringBehavior, MappingBehavior
from twisted_nat.rendezvous import NATHint, Offer
from twisted_nat.service import NATTraversalService
from twisted_nat.trust.handshake import Offering
from twisted_nat.trust.keys import Identity

ATTACKER = "203.0.113.66"
"""Where the stranger really connects to the rendezvous from, as the server attests."""

TARGETS = "100.64.0."
"""Where the offers point: addresses nobody holds (shared address space, which peers may use)."""

PORT_DEPENDENT = MappingBehavior.ADDRESS_AND_PORT_DEPENDENT
FILTERING = FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT

VICTIMS: dict[str, tuple[str, sim.PortAllocation, NATHint]] = {
    # victim's NAT: (its kind, its allocation, the hint the offer claims to make it work hardest)
    "port-restricted cone": (
        "port-restricted-cone",
        sim.PortAllocation.PRESERVING,
        NATHint(PORT_DEPENDENT, FILTERING, False, True),  # "random symmetric": probe me
    ),
    "symmetric, sequential ports": (
        "symmetric",
        sim.PortAllocation.SEQUENTIAL,
        NATHint(PORT_DEPENDENT, FILTERING, True, False, 40000),  # "sequential": run to me
    ),
    "symmetric, random ports": (
        "symmetric",
        sim.PortAllocation.RANDOM,
        NATHint(MappingBehavior.ENDPOINT_INDEPENDENT, FILTERING, False, True),  # "a cone"
    ),
}


def hostile_offer(
    victim: NATTraversalService, name: str, hint: NATHint | None, count: int = 32
) -> Offer:
    """A validly signed offer from a fresh key, naming C{count} addresses nobody holds."""
    candidates = [
        Candidate(CandidateType.SERVER_REFLEXIVE, f"{TARGETS}{i + 1}", 40000 + i)
        for i in range(count)
    ]
    offering = Offering(Identity.generate(), "mallory", candidates, hint, name, victim.key)
    return attrs.evolve(offering.offer, seen_from=ATTACKER)


@attrs.frozen
class Cost:
    datagrams: int
    payload_bytes: int
    sockets: int
    offers_refused: int


def cost_of_offers(victim_nat: str, offers: int = 1, seconds: float = 15.0) -> Cost:
    """What C{offers} hostile offers made a peer behind C{victim_nat} (of L{VICTIMS}) spend."""
    kind, allocation, hint = VICTIMS[victim_nat]
    w = build_world({"bob": (kind, allocation)}, World)
    bob = w.services["bob"]
    sent: list[int] = []
    send = w.internet._send

    def counting(sender: Any, source: Address, destination: Address, data: bytes) -> None:
        if destination[0].startswith(TARGETS):
            sent.append(len(data))
        send(sender, source, destination, data)

    w.internet._send = counting  # type: ignore[method-assign]
    opened = sockets_opened(bob, lambda method, names: len(names))
    refused: list[object] = []
    for _ in range(offers):
        bob.punching.on_offer(hostile_offer(bob, "bob", hint)).addErrback(refused.append)
        w.internet.advance(0.01)
    w.internet.advance(seconds)
    return Cost(len(sent), sum(sent), sum(opened), len(refused))
