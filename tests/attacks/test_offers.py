"""
Malformed-but-plausible offers end their punch cleanly: nothing leaks,
nothing escapes into the reactor.
"""

from __future__ import annotations

import os

import pytest
from twisted.internet.defer import Deferred

from tests.test_punch import PORT, make_internet, make_peer
from tests.test_service import PRESERVE, SEQUENTIAL, world
from twisted_nat.candidates import Candidate, CandidateType, candidate_priority
from twisted_nat.punch import PunchError, PunchFailed, PunchResult, PunchSession
from twisted_nat.rendezvous.values import MAX_CANDIDATES

IPV6 = Candidate(CandidateType.SERVER_REFLEXIVE, "2001:db8::7", 40000)


def outcome(deferred: Deferred[PunchResult]) -> list[object]:
    seen: list[object] = []
    deferred.addBoth(seen.append)
    return seen


def test_an_ipv6_candidate_is_skipped_not_fatal() -> None:
    """
    Sent to an IPv4 socket, an IPv6 address raised out of the first round
    and left the session behind for good; now that datagram is lost, as
    a network would lose it, and the other candidates connect.
    """
    internet = make_internet()
    alice, bob = make_peer(internet, "port-restricted", 1), make_peer(internet, "full", 2)
    session, secret = os.urandom(16), os.urandom(32)
    offer = [IPV6, *bob.candidates]
    da = alice.puncher.punch_hole(
        PORT, offer, session, secret=secret, controlling=True, local_candidates=alice.candidates
    )
    db = bob.puncher.punch_hole(
        PORT, alice.candidates, session, secret=secret, controlling=False,
        local_candidates=bob.candidates,
    )  # fmt: skip
    internet.run_until(da)
    internet.run_until(db)
    assert alice.puncher.stats.unsendable >= 1


def test_only_unusable_candidates_fail_at_the_timeout_and_leave_nothing() -> None:
    internet = make_internet()
    alice = make_peer(internet, "port-restricted", 1)
    seen = outcome(
        alice.puncher.punch_hole(
            PORT, [IPV6], os.urandom(16), secret=os.urandom(32), controlling=True, timeout=2.0
        )
    )
    internet.advance(3.0)
    [failure] = seen
    assert isinstance(failure.value, PunchFailed)  # type: ignore[attr-defined]
    assert alice.puncher.session_ids() == []


def test_an_error_inside_a_punch_ends_that_punch_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Whatever goes wrong inside one session (here, a fault injected into its
    rounds) fails that punch with L{PunchError}; the other punch goes on.
    """
    internet = make_internet()
    alice, bob = make_peer(internet, "full", 1), make_peer(internet, "full", 2)
    doomed = os.urandom(16)
    real_tick = PunchSession.tick

    def tick(self: PunchSession, now: float) -> list[object]:
        if self.keys.session_id == doomed:
            raise RuntimeError("injected")
        return real_tick(self, now)  # type: ignore[return-value]

    monkeypatch.setattr(PunchSession, "tick", tick)
    failed = outcome(
        alice.puncher.punch_hole(
            PORT, bob.candidates, doomed, secret=os.urandom(32), controlling=True
        )
    )
    [failure] = failed
    assert isinstance(failure.value, PunchError)  # type: ignore[attr-defined]
    assert "injected" in str(failure.value)  # type: ignore[attr-defined]
    assert doomed not in alice.puncher.session_ids()
    session, secret = os.urandom(16), os.urandom(32)
    da = alice.puncher.punch_hole(
        PORT, bob.candidates, session, secret=secret, controlling=True,
        local_candidates=alice.candidates,
    )  # fmt: skip
    bob.puncher.punch_hole(
        PORT, alice.candidates, session, secret=secret, controlling=False,
        local_candidates=bob.candidates,
    )  # fmt: skip
    assert isinstance(internet.run_until(da), PunchResult)


def test_an_answer_fits_its_limit_whatever_the_offer_held() -> None:
    """
    Behind a NAT that allocates in sequence, an answer holds predicted
    ports as many as the offer's candidates ranked above them, plus 16:
    the predictions are cut to fit, so that the answer can always be sent.
    """
    w = world({"alice": ("symmetric", SEQUENTIAL), "bob": ("port-restricted-cone", PRESERVE)})
    alice = w.services["alice"]
    many = [
        Candidate(CandidateType.HOST, f"10.0.{i}.1", 5000, candidate_priority(CandidateType.HOST))
        for i in range(MAX_CANDIDATES)
    ]
    answering = Deferred.fromCoroutine(alice.punching.candidates_for_punch(many))
    candidates, latest = w.internet.run_until(answering)
    assert latest is not None, "the prediction ran"
    assert len(candidates) == MAX_CANDIDATES
    assert set(alice.candidates) <= set(candidates), "every candidate we found is kept"
