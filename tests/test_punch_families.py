"""
IPv6 beside IPv4 in a punch, event by event and without a clock: pairs form
within a family, both families are punched together, and the controlling
peer takes IPv6 when its round trip is within about 10 % of IPv4's, waiting
a bounded moment for it once IPv4 works.  L{FamilyPreference} is the
decision alone.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_punch_handshake import SECRET, SESSION, deliver, sent_to, what
from twisted_nat.address import family_of
from twisted_nat.bases import SHARED, SHARED6, Base, relay_base, shared_base
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.control import SessionKeys
from twisted_nat.errors import ConfigurationError
from twisted_nat.punch import PunchSession, PunchSettings
from twisted_nat.punch.preference import FamilyPreference

ALICE4 = Candidate(CandidateType.SERVER_REFLEXIVE, "198.51.100.1", 40001)
ALICE6 = Candidate(CandidateType.HOST, "2001:db8:a::1", 5000)
BOB4 = Candidate(CandidateType.SERVER_REFLEXIVE, "198.51.100.2", 40002)
BOB6 = Candidate(CandidateType.HOST, "2001:db8:b::1", 5000)
BOB_HOST4 = Candidate(CandidateType.HOST, "192.0.2.12", 5000)


def sessions(
    alice_has: tuple[Candidate, ...] = (ALICE4, ALICE6),
    bob_has: tuple[Candidate, ...] = (BOB4, BOB6),
    relays: tuple[Base, ...] = (),
    family_in_use: int | None = None,
) -> tuple[PunchSession, PunchSession]:
    """alice (controlling) and bob, each with the candidates given."""
    alice = PunchSession(
        SessionKeys.derive(SESSION, SECRET, offerer=True),
        True,
        alice_has,
        bob_has,
        PunchSettings(),
        0.0,
        relays,
        family_in_use=family_in_use,
    )
    bob = PunchSession(
        SessionKeys.derive(SESSION, SECRET, offerer=False),
        False,
        bob_has,
        alice_has,
        PunchSettings(),
        0.0,
    )
    return alice, bob


def works(
    alice: PunchSession, bob: PunchSession, first: list[Any], to: Candidate, sent: float, rtt: float
) -> list[Any]:
    """alice's PUNCH to C{to} reaches bob and its ACK comes back after C{rtt}: alice's actions."""
    ours = ALICE6 if family_of(to.host) == 6 else ALICE4
    base = shared_base(family_of(to.host))
    ack, *_ = deliver(sent_to(first, to.address), bob, sent + rtt / 2, ours.address, base)
    return deliver(ack, alice, sent + rtt, to.address, base)


def test_pairs_form_within_a_family() -> None:
    """Each candidate pairs with the shared socket of its family, a relay with its own."""
    relay4, relay6 = relay_base(("203.0.113.9", 50000)), relay_base(("2001:db8:f::9", 50000))
    alice, _ = sessions(relays=(relay4, relay6))
    assert {(a.to, a.base) for a in alice.tick(0.0)} == {
        (BOB4.address, SHARED),
        (BOB4.address, relay4),
        (BOB6.address, SHARED6),
    }, "a host candidate pairs with no relay; an IPv6 one never with an IPv4 base"
    assert (relay4.family, relay6.family, SHARED.family, SHARED6.family) == (4, 6, 4, 6)


def test_without_ipv6_candidates_the_grace_is_the_ordinary_one() -> None:
    """A peer (or a machine) without IPv6 punches and waits exactly as before."""
    alice, bob = sessions((ALICE4,), (BOB_HOST4, BOB4))
    assert what(works(alice, bob, alice.tick(0.0), BOB4, 0.0, 0.01)) == [("StartGrace", 0.02)]


def test_the_best_pair_working_with_no_other_family_left_is_taken_at_once() -> None:
    """Nothing ranks above it and no IPv6 pair races it: no grace once bob punched it too."""
    alice, bob = sessions((ALICE4,), (BOB4,))
    assert what(works(alice, bob, alice.tick(0.0), BOB4, 0.0, 0.01)) == [("StartGrace", 0.02)]
    punch = deliver(sent_to(bob.tick(0.0), ALICE4.address), alice, 0.011, BOB4.address)
    assert what(punch)[-1] == ("StartGrace", 0.0)


def test_an_ipv4_pair_racing_ipv6_waits_though_bob_punched_it() -> None:
    alice, bob = sessions()
    first = alice.tick(0.0)
    assert what(works(alice, bob, first, BOB4, 0.0, 0.01)) == [("StartGrace", 0.25)]
    punch = deliver(sent_to(bob.tick(0.0), ALICE4.address), alice, 0.011, BOB4.address)
    assert ("StartGrace", 0.0) not in what(punch)


def test_ipv4_first_waits_for_ipv6_and_takes_it_when_as_quick() -> None:
    alice, bob = sessions()
    first = alice.tick(0.0)
    assert what(works(alice, bob, first, BOB4, 0.0, 0.020)) == [("StartGrace", 0.25)]
    # IPv6 works a moment later, its round trip 21 ms: within 10 % of IPv4's.
    assert what(works(alice, bob, first, BOB6, 0.0, 0.021)) == [("StartGrace", 0.03)]
    assert what(alice.grace_over(0.051)) == [
        ("CONFIRM", BOB6.address, SHARED6),
        ("Connected", BOB6.address, SHARED6),
    ]


def test_ipv6_clearly_slower_loses_to_ipv4() -> None:
    alice, bob = sessions()
    first = alice.tick(0.0)
    works(alice, bob, first, BOB4, 0.0, 0.020)
    works(alice, bob, first, BOB6, 0.0, 0.030)
    assert what(alice.grace_over(0.06))[1] == ("Connected", BOB4.address, SHARED)


@pytest.mark.parametrize(("in_use", "taken"), [(None, SHARED6), (6, SHARED6), (4, SHARED)])
def test_a_punch_again_leans_to_the_family_in_use(in_use: int | None, taken: Base) -> None:
    """IPv6 8 % slower: taken afresh, kept if in use, not worth leaving IPv4 for."""
    alice, bob = sessions(family_in_use=in_use)
    first = alice.tick(0.0)
    works(alice, bob, first, BOB4, 0.0, 0.050)
    works(alice, bob, first, BOB6, 0.0, 0.054)
    assert what(alice.grace_over(0.1))[1][2] is taken


def test_ipv6_blocked_ipv4_is_taken_after_the_wait() -> None:
    """A firewall that drops IPv6 costs the wait (250 ms) and no more."""
    alice, bob = sessions()
    first = alice.tick(0.0)
    [grace] = works(alice, bob, first, BOB4, 0.0, 0.020)
    assert grace.delay == PunchSettings().families.wait
    assert what(alice.grace_over(0.02 + grace.delay)) == [
        ("CONFIRM", BOB4.address, SHARED),
        ("Connected", BOB4.address, SHARED),
    ]


def test_ipv6_first_is_taken_after_the_ordinary_grace() -> None:
    alice, bob = sessions()
    first = alice.tick(0.0)
    assert what(works(alice, bob, first, BOB6, 0.0, 0.010)) == [("StartGrace", 0.02)]
    assert what(alice.grace_over(0.03))[1] == ("Connected", BOB6.address, SHARED6)


def test_the_answerer_takes_an_ipv6_confirm() -> None:
    alice, bob = sessions()
    first, bobs = alice.tick(0.0), bob.tick(0.0)
    ack, check = deliver(sent_to(first, BOB6.address), bob, 0.005, ALICE6.address, SHARED6)
    [answer] = deliver(check, alice, 0.007, BOB6.address, SHARED6)
    deliver(answer, bob, 0.009, ALICE6.address, SHARED6)
    deliver(ack, alice, 0.01, BOB6.address, SHARED6)
    confirm = sent_to(alice.grace_over(0.03), BOB6.address)
    assert what(deliver(confirm, bob, 0.035, ALICE6.address, SHARED6)) == [
        ("Connected", ALICE6.address, SHARED6)
    ]
    assert bobs, "bob punched both families too"
    assert {a.base for a in bobs} == {SHARED, SHARED6}


# --- the decision alone ---


@pytest.mark.parametrize(
    ("rtt6", "rtt4", "current", "family"),
    [
        (0.021, 0.020, None, 6),  # within 10 %
        (0.0225, 0.020, None, 4),  # 12.5 % slower
        (0.0225, 0.020, 6, 6),  # in use: kept up to 15 %
        (0.0235, 0.020, 6, 4),  # past 15 %: moved
        (0.0215, 0.020, 4, 4),  # IPv4 in use: IPv6 must be within 5 %
        (0.0205, 0.020, 4, 6),
        (0.0009, 0.0001, None, 6),  # a LAN's fractions of a millisecond: the slack
        (None, 0.020, None, 4),
        (0.020, None, None, 6),
        (None, None, 4, 4),
        (None, None, None, 6),
    ],
)
def test_the_preference(
    rtt6: float | None, rtt4: float | None, current: int | None, family: int
) -> None:
    assert FamilyPreference().choose(rtt6, rtt4, current) == family


def test_no_flapping_around_the_threshold() -> None:
    """RTTs jittering around 10 % move a connection once, not at every measurement."""
    preference, current = FamilyPreference(), 6
    moves = 0
    for rtt6 in [0.0218, 0.0222, 0.0219, 0.0224, 0.0221, 0.0236, 0.0224, 0.0219, 0.0223]:
        chosen = preference.choose(rtt6, 0.020, current)
        moves += chosen != current
        current = chosen
    assert (moves, current) == (1, 4)


@pytest.mark.parametrize(
    "fields",
    [{"margin": 1.5}, {"margin": 0.05, "hysteresis": 0.1}, {"wait": 0.0}, {"slack": -1.0}],
)
def test_nonsense_is_refused(fields: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        FamilyPreference(**fields)
