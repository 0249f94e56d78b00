"""
A stranger's offer cannot open our TURN relay to every address it names:
a relay with a permission carries PUNCHes from our relayed address there.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from twisted_nat.bases import BaseRegistry, relay_base
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.service.addresses import Addresses
from twisted_nat.service.relays import MAX_PERMITTED, Relays
from twisted_nat.turn import parse_turn_uri

CLAIMED = [Candidate(CandidateType.SERVER_REFLEXIVE, f"100.64.0.{i}", 40000) for i in range(1, 33)]
THEIR_RELAY = Candidate(CandidateType.RELAYED, "203.0.113.12", 50000)
SEEN_FROM = "198.51.100.7"


class Permissions:
    """Stands where an Allocation would, and keeps the hosts asked for."""

    def __init__(self) -> None:
        self.hosts: list[str] = []

    def create_permission(self, *hosts: str) -> Deferred[None]:
        self.hosts += hosts
        return succeed(None)


def relays_asking() -> tuple[Relays, Permissions]:
    relays = Relays(Clock(), [], BaseRegistry(), cast(Addresses, None), lambda: True)
    asked = Permissions()
    server = parse_turn_uri("turn:203.0.113.12:3478", "user", "secret")
    relays._held[relay_base(("203.0.113.12", 49999))] = (cast(Any, asked), server)
    return relays, asked


def test_only_the_attested_address_and_relays_are_permitted() -> None:
    relays, asked = relays_asking()
    mine = Candidate(CandidateType.SERVER_REFLEXIVE, SEEN_FROM, 40001)
    relays.permit([*CLAIMED, mine, THEIR_RELAY], SEEN_FROM)
    assert sorted(asked.hosts) == sorted([SEEN_FROM, THEIR_RELAY.host])


def test_without_the_rendezvous_word_a_few_claims_only() -> None:
    relays, asked = relays_asking()
    relays.permit(CLAIMED, None)
    assert len(asked.hosts) == MAX_PERMITTED
