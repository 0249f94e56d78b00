"""
The strategy of a punch (L{twisted_nat.punch.plan}): which technique the
hints of both sides call for, decided alike on both sides, and the hint a
peer sends about its own NAT.
"""

from __future__ import annotations

import attrs
import pytest

from twisted_nat.candidates import Candidate, CandidateType, candidate_priority
from twisted_nat.errors import ConfigurationError
from twisted_nat.nat import FilteringBehavior, MappingBehavior, NATBehavior
from twisted_nat.punch import (
    PunchPlan,
    PunchSettings,
    SymmetricSettings,
    Technique,
    hint_for,
    plan,
)
from twisted_nat.punch.plan import confine, settings_for
from twisted_nat.rendezvous.hint import NATHint

SETTINGS = SymmetricSettings()
PEER_HOST = Candidate(CandidateType.HOST, "10.0.0.2", 5000)
PEER_PUBLIC = Candidate(CandidateType.SERVER_REFLEXIVE, "198.51.100.7", 40000)
REMOTE = [PEER_HOST, PEER_PUBLIC]

SYMMETRIC = NATHint(MappingBehavior.ADDRESS_AND_PORT_DEPENDENT, birthday=True)
PORT_RESTRICTED = NATHint(
    MappingBehavior.ENDPOINT_INDEPENDENT,
    FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
    birthday=True,
)
SEQ = NATHint(
    MappingBehavior.ADDRESS_AND_PORT_DEPENDENT,
    FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
    predictable=True,
    meet=40064,
)

HARD = Technique.BIRTHDAY_SOCKETS
EASY = Technique.BIRTHDAY_PROBES
ORDINARY = Technique.ORDINARY
OTHER_PART = {HARD: EASY, EASY: HARD, ORDINARY: ORDINARY}


def technique(ours: NATHint | None, theirs: NATHint | None) -> Technique:
    return plan(ours, theirs, SETTINGS, REMOTE).technique


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        (SYMMETRIC, PORT_RESTRICTED, HARD),
        (PORT_RESTRICTED, SYMMETRIC, EASY),
        (SYMMETRIC, SYMMETRIC, ORDINARY),
        (PORT_RESTRICTED, PORT_RESTRICTED, ORDINARY),
        (attrs.evolve(SYMMETRIC, predictable=True), PORT_RESTRICTED, ORDINARY),
        (attrs.evolve(SYMMETRIC, mapping=MappingBehavior.ADDRESS_DEPENDENT), PORT_RESTRICTED, HARD),
        (
            attrs.evolve(SYMMETRIC, mapping=MappingBehavior.DESTINATION_DEPENDENT),
            PORT_RESTRICTED,
            HARD,
        ),
        (SYMMETRIC, attrs.evolve(PORT_RESTRICTED, filtering=FilteringBehavior.UNKNOWN), HARD),
        (
            SYMMETRIC,
            attrs.evolve(PORT_RESTRICTED, filtering=FilteringBehavior.ADDRESS_DEPENDENT),
            ORDINARY,
        ),
        (
            SYMMETRIC,
            attrs.evolve(PORT_RESTRICTED, filtering=FilteringBehavior.ENDPOINT_INDEPENDENT),
            ORDINARY,
        ),
        (attrs.evolve(SYMMETRIC, mapping=MappingBehavior.UNKNOWN), PORT_RESTRICTED, ORDINARY),
        (SYMMETRIC, attrs.evolve(PORT_RESTRICTED, birthday=False), ORDINARY),
        (attrs.evolve(PORT_RESTRICTED, birthday=False), SYMMETRIC, ORDINARY),
        (SYMMETRIC, None, ORDINARY),
        (None, PORT_RESTRICTED, ORDINARY),
    ],
)
def test_birthday_parts(ours: NATHint | None, theirs: NATHint | None, expected: Technique) -> None:
    """The same two hints give the two peers opposite parts, or none to both."""
    assert technique(ours, theirs) is expected
    assert technique(theirs, ours) is OTHER_PART[expected]


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        (SEQ, attrs.evolve(SEQ, meet=50064), True),
        (SEQ, attrs.evolve(SEQ, mapping=MappingBehavior.ADDRESS_DEPENDENT), True),
        (SEQ, attrs.evolve(SEQ, meet=None), False),
        (attrs.evolve(SEQ, meet=None), SEQ, False),
        (SEQ, attrs.evolve(SEQ, mapping=MappingBehavior.ENDPOINT_INDEPENDENT), False),
        (SEQ, attrs.evolve(SEQ, mapping=MappingBehavior.UNKNOWN), False),
        (SEQ, attrs.evolve(SEQ, predictable=False), False),
        (attrs.evolve(SEQ, predictable=False), SEQ, False),
        (SEQ, None, False),
        (None, SEQ, False),
        (None, None, False),
    ],
)
def test_meeting_runs(ours: NATHint | None, theirs: NATHint | None, expected: bool) -> None:
    """Both peers run, or neither, from the same two hints, each its own way round."""
    assert (technique(ours, theirs) is Technique.MEETING) is expected
    assert (technique(theirs, ours) is Technique.MEETING) is expected


def test_a_meeting_run_aims_at_the_peers_meeting_port_below_its_predicted_ones() -> None:
    chosen = plan(SEQ, attrs.evolve(SEQ, meet=50064), SETTINGS, REMOTE)
    assert chosen.technique is Technique.MEETING
    assert chosen.sockets == SETTINGS.meeting_sockets
    assert chosen.spray_to is not None
    (point,) = chosen.spray_to
    assert point.address == (PEER_PUBLIC.host, 50064)
    assert point.kind is CandidateType.SERVER_REFLEXIVE
    lowest_predicted = candidate_priority(CandidateType.SERVER_REFLEXIVE, 32767 - 255)
    assert point.priority < lowest_predicted


def test_the_easy_side_probes_at_once_whether_it_offered_or_answered() -> None:
    easy = plan(PORT_RESTRICTED, SYMMETRIC, SETTINGS, REMOTE)
    assert easy == PunchPlan(EASY, probe_host=PEER_PUBLIC.host)
    hard = plan(SYMMETRIC, PORT_RESTRICTED, SETTINGS, REMOTE)
    assert hard == PunchPlan(HARD, sockets=SETTINGS.birthday_sockets)


def test_no_technique_without_the_peers_public_address_or_our_own_part() -> None:
    assert plan(SYMMETRIC, PORT_RESTRICTED, SETTINGS, [PEER_HOST]).technique is ORDINARY
    assert plan(SEQ, SEQ, SETTINGS, [PEER_HOST]).technique is ORDINARY
    off = SymmetricSettings(birthday_sockets=0, birthday_probes=0, meeting_sockets=0)
    for ours, theirs in [(SYMMETRIC, PORT_RESTRICTED), (PORT_RESTRICTED, SYMMETRIC), (SEQ, SEQ)]:
        assert plan(ours, theirs, off, REMOTE).technique is ORDINARY


@pytest.mark.parametrize(
    "bad",
    [
        {"birthday_sockets": -1},
        {"birthday_probes": -1},
        {"meeting_sockets": -1},
        {"birthday_rate": 0.0},
        {"birthday_rate": float("inf")},
        {"birthday_rate": float("nan")},
    ],
)
def test_settings_refuse_what_cannot_work(bad: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError, match=next(iter(bad))):
        SymmetricSettings(**bad)  # type: ignore[arg-type]


def behavior(mapping: MappingBehavior, port_delta: int | None = None) -> NATBehavior:
    return NATBehavior(
        local=("10.0.0.1", 5000),
        public=("198.51.100.1", 40000),
        mapping=mapping,
        filtering=FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
        hairpinning=None,
        server=("203.0.113.10", 3478),
        port_delta=port_delta,
    )


def test_the_hint_says_which_part_we_take() -> None:
    assert hint_for(None, SETTINGS) is None
    random_ports = behavior(MappingBehavior.ADDRESS_AND_PORT_DEPENDENT)
    cone = behavior(MappingBehavior.ENDPOINT_INDEPENDENT)
    assert hint_for(random_ports, SETTINGS) == NATHint.of(random_ports, birthday=True)
    assert hint_for(cone, SETTINGS) == NATHint.of(cone, birthday=True)
    no_sockets = SymmetricSettings(birthday_sockets=0)
    no_probes = SymmetricSettings(birthday_probes=0)
    assert hint_for(random_ports, no_sockets) == NATHint.of(random_ports, birthday=False)
    assert hint_for(cone, no_probes) == NATHint.of(cone, birthday=False)


def test_the_hint_names_a_meeting_port_only_with_a_prediction() -> None:
    sequential = behavior(MappingBehavior.ADDRESS_AND_PORT_DEPENDENT, port_delta=2)
    assert hint_for(sequential, SETTINGS) == NATHint.of(sequential)
    hint = hint_for(sequential, SETTINGS, latest=40000)
    assert hint is not None and hint.meet == 40000 + 2 * SETTINGS.meeting_sockets
    no_run = hint_for(sequential, SymmetricSettings(meeting_sockets=0), latest=40000)
    assert no_run is not None and no_run.meet is None


# --- aimed only where the rendezvous saw the peer ---

STRANGER = Candidate(CandidateType.SERVER_REFLEXIVE, "100.64.0.9", 40000)


def test_birthday_sockets_spray_only_the_peers_attested_address() -> None:
    chosen = plan(SYMMETRIC, PORT_RESTRICTED, SETTINGS, [*REMOTE, STRANGER])
    assert chosen.technique is HARD
    confined = confine(chosen, [*REMOTE, STRANGER], PEER_PUBLIC.host)
    assert isinstance(confined, PunchPlan) and confined.spray_to == (PEER_PUBLIC,)


@pytest.mark.parametrize(
    "ours,theirs", [(SYMMETRIC, PORT_RESTRICTED), (PORT_RESTRICTED, SYMMETRIC)]
)
def test_no_expensive_technique_towards_an_address_the_rendezvous_did_not_see(
    ours: NATHint, theirs: NATHint
) -> None:
    """The candidates are the peer's claim: a stranger may name any address."""
    chosen = plan(ours, theirs, SETTINGS, [STRANGER])
    assert chosen.technique is not ORDINARY
    assert confine(chosen, [STRANGER], "203.0.113.66") == (
        "the peer's public address is not 203.0.113.66, where the rendezvous saw it"
    )
    assert isinstance(confine(chosen, [STRANGER], None), str)
    assert isinstance(confine(chosen, [STRANGER], STRANGER.host), PunchPlan)


def test_a_meeting_run_only_to_the_attested_address() -> None:
    chosen = plan(SEQ, SEQ, SETTINGS, REMOTE)
    assert chosen.technique is Technique.MEETING
    assert confine(chosen, REMOTE, PEER_PUBLIC.host) == chosen
    assert isinstance(confine(chosen, REMOTE, "203.0.113.66"), str)


def test_the_ordinary_handshake_needs_no_attestation() -> None:
    assert confine(plan(None, None, SETTINGS, REMOTE), REMOTE, None) == plan(
        None, None, SETTINGS, REMOTE
    )


RANDOM = NATHint(MappingBehavior.ADDRESS_AND_PORT_DEPENDENT)


@pytest.mark.parametrize(
    ("ours", "theirs", "chosen", "waits"),
    [
        (RANDOM, RANDOM, PunchPlan(), False),
        (SYMMETRIC, SYMMETRIC, PunchPlan(), False),
        (SEQ, SEQ, PunchPlan(), False),
        (SEQ, SEQ, PunchPlan(Technique.MEETING, 8), True),
        (SYMMETRIC, PORT_RESTRICTED, PunchPlan(HARD, 256), True),
        (SYMMETRIC, PORT_RESTRICTED, PunchPlan(), True),
        (PORT_RESTRICTED, PORT_RESTRICTED, PunchPlan(), True),
        (RANDOM, None, PunchPlan(), True),
        (None, RANDOM, PunchPlan(), True),
    ],
)
def test_the_relay_grace_only_where_a_direct_pair_may_come(
    ours: NATHint | None, theirs: NATHint | None, chosen: PunchPlan, waits: bool
) -> None:
    settings = PunchSettings()
    adjusted = settings_for(settings, ours, theirs, chosen)
    assert adjusted.relay_grace == (settings.relay_grace if waits else settings.grace)
    assert attrs.evolve(adjusted, relay_grace=settings.relay_grace) == settings
