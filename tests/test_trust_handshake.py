"""
The signed key agreement of one session (L{twisted_nat.trust.handshake}),
without a network: both ends derive one secret, and whoever carries the
offer and the answer can change nothing without being caught.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.control import SessionKeys
from twisted_nat.errors import BadSignature, KeyMismatch
from twisted_nat.nat import FilteringBehavior, MappingBehavior
from twisted_nat.rendezvous.hint import NATHint
from twisted_nat.rendezvous.values import Answer, Offer
from twisted_nat.trust import Identity
from twisted_nat.trust.handshake import (
    Offering,
    answer_offer,
    check_addressed,
    check_offer,
)

ALICE, BOB, MALLORY = Identity.generate(), Identity.generate(), Identity.generate()
OURS = (Candidate(CandidateType.SERVER_REFLEXIVE, "203.0.113.7", 51000),)
THEIRS = (Candidate(CandidateType.SERVER_REFLEXIVE, "198.51.100.9", 52000),)
HINT = NATHint(MappingBehavior.ENDPOINT_INDEPENDENT, FilteringBehavior.ENDPOINT_INDEPENDENT)


def handshake(to_key: bool = True) -> tuple[Offering, Answer, bytes]:
    offering = Offering(ALICE, "alice", OURS, HINT, "bob", BOB.public if to_key else None)
    check_offer(offering.offer)
    check_addressed(offering.offer, "bob", BOB.public)
    answer, secret = answer_offer(BOB, "bob", offering.offer, THEIRS, HINT)
    return offering, answer, secret


def test_both_ends_agree_on_one_secret_and_sessions_differ():
    offering, answer, bobs = handshake()
    assert offering.finish(answer) == bobs
    assert len(bobs) == 32
    _, _, other = handshake()
    assert other != bobs
    # The keys derived from it pair up: what one side sends under, the other receives under.
    alices = SessionKeys.derive(answer.session_id, bobs, offerer=True)
    bobs_keys = SessionKeys.derive(answer.session_id, bobs, offerer=False)
    assert alices.send == bobs_keys.receive and alices.receive == bobs_keys.send


def test_the_relay_sees_public_values_only():
    offering, answer, secret = handshake()
    wire = json.dumps(offering.offer.as_json()) + json.dumps(answer.as_json())
    keys = SessionKeys.derive(answer.session_id, secret, offerer=True)
    for value in (secret, keys.send, keys.receive):
        assert value.hex() not in wire


OFFER_CHANGES: dict[str, Any] = {
    "candidates": THEIRS,
    "nat": None,
    "to_name": "carol",
    "session_id": bytes(16),
    "ephemeral": bytes(range(32)),
    "from_name": "mallory",
}


@pytest.mark.parametrize("field", sorted(OFFER_CHANGES))
def test_any_change_to_an_offer_breaks_its_signature(field):
    offering, _, _ = handshake()
    changed = attrs.evolve(offering.offer, **{field: OFFER_CHANGES[field]})
    with pytest.raises(BadSignature):
        check_offer(changed)


def test_an_offer_signed_by_another_key_is_refused():
    offering, _, _ = handshake()
    forged = attrs.evolve(offering.offer, signature=MALLORY.sign(b"anything"))
    with pytest.raises(BadSignature):
        check_offer(forged)
    impostor = attrs.evolve(offering.offer, from_key=MALLORY.public)
    with pytest.raises(BadSignature):
        check_offer(impostor)


def test_an_offer_for_someone_else_is_refused():
    offering, _, _ = handshake()
    with pytest.raises(KeyMismatch, match="not ours"):
        check_addressed(offering.offer, "bob", MALLORY.public)
    by_name = Offering(ALICE, "alice", OURS, None, "bob").offer
    check_addressed(by_name, "bob", BOB.public)
    with pytest.raises(KeyMismatch, match="not us"):
        check_addressed(by_name, "carol", MALLORY.public)


ANSWER_CHANGES: dict[str, Any] = {
    "candidates": OURS,
    "nat": None,
    "ephemeral": bytes(range(32)),
}


@pytest.mark.parametrize("field", sorted(ANSWER_CHANGES))
def test_any_change_to_an_answer_breaks_its_signature(field):
    offering, answer, _ = handshake(to_key=False)
    with pytest.raises(BadSignature):
        offering.finish(attrs.evolve(answer, **{field: ANSWER_CHANGES[field]}))


def test_an_answer_from_another_key_is_a_key_mismatch():
    """The rendezvous routed alice's offer to mallory, who answers as herself."""
    offering = Offering(ALICE, "alice", OURS, None, "bob", BOB.public)
    answer, _ = answer_offer(MALLORY, "bob", offering.offer, THEIRS)
    with pytest.raises(KeyMismatch, match="not tn-"):
        offering.finish(answer)


def test_an_answer_under_another_name_is_refused():
    """
    Dialled by name alone, the rendezvous routed alice's offer to carol, who
    answers honestly as herself: alice does not take carol for bob.
    """
    offering, answer, _ = handshake(to_key=False)
    carol = Identity.generate()
    honest, _ = answer_offer(carol, "carol", offering.offer, THEIRS)
    with pytest.raises(KeyMismatch, match=r"carol .* answered an offer for bob"):
        offering.finish(honest)
    renamed = attrs.evolve(answer, from_name="mallory")
    with pytest.raises(KeyMismatch):
        offering.finish(renamed)


def test_an_answer_to_another_offer_is_refused():
    """An answer is bound to the whole offer, not only to its session id."""
    offering, _, _ = handshake()
    other = Offering(ALICE, "alice", THEIRS, None, "bob", BOB.public)
    answer, _ = answer_offer(BOB, "bob", other.offer, THEIRS)
    with pytest.raises(BadSignature, match="another session"):
        offering.finish(answer)
    same_session = attrs.evolve(answer, session_id=offering.offer.session_id)
    with pytest.raises(BadSignature):
        offering.finish(same_session)


def test_a_man_in_the_middle_who_swaps_ephemeral_keys_is_caught():
    """
    Mallory, relaying, replaces alice's ephemeral key with her own to read
    the session: bob refuses the offer, and a re-signed one is mallory's.
    """
    offering, _, _ = handshake()
    swapped = attrs.evolve(
        offering.offer, ephemeral=Offering(MALLORY, "x", (), None, "bob").offer.ephemeral
    )
    with pytest.raises(BadSignature):
        check_offer(swapped)
    answer, _ = answer_offer(BOB, "bob", offering.offer, THEIRS)
    mallorys = Offering(MALLORY, "alice", OURS, None, "bob", BOB.public)
    swapped_answer = attrs.evolve(answer, ephemeral=mallorys.offer.ephemeral)
    with pytest.raises(BadSignature):
        offering.finish(swapped_answer)


def test_a_low_order_ephemeral_key_is_refused():
    offering = Offering(ALICE, "alice", OURS, None, "bob")
    zero = Offering(ALICE, "alice", OURS, None, "bob")
    bad = attrs.evolve(zero.offer, ephemeral=bytes(32))
    with pytest.raises(BadSignature):
        answer_offer(BOB, "bob", bad, THEIRS)
    answer, _ = answer_offer(BOB, "bob", offering.offer, THEIRS)
    assert len(offering.finish(answer)) == 32


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=64, max_size=64))
def test_random_signatures_never_verify(signature):
    offering, answer, _ = handshake()
    with pytest.raises(BadSignature):
        check_offer(attrs.evolve(offering.offer, signature=signature))
    with pytest.raises(BadSignature):
        offering.finish(attrs.evolve(answer, signature=signature))


def test_wire_round_trip_keeps_signatures_valid():
    offering, answer, secret = handshake()
    offer = Offer.from_json(json.loads(json.dumps(offering.offer.as_json())))
    check_offer(offer)
    back = Answer.from_json(json.loads(json.dumps(answer.as_json())))
    assert offering.finish(back) == secret
