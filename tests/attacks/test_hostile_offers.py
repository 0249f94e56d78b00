"""
A peer is not a packet cannon: a stranger's offer naming addresses that
never answer costs a small fixed budget, whatever NAT the peer is behind.
"""

from __future__ import annotations

import itertools

import pytest
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from tests.support.hostile import VICTIMS, cost_of_offers, hostile_offer
from tests.support.world import World, build_world
from twisted_nat import control
from twisted_nat import testing as sim
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.control import SessionKeys
from twisted_nat.errors import PeerUnavailable
from twisted_nat.punch import Action, PunchSession, PunchSettings, Send

BUDGET_DATAGRAMS = 100
BUDGET_BYTES = 12_000


@pytest.mark.parametrize("victim", list(VICTIMS))
def test_one_offer_costs_at_most_the_budget(victim: str) -> None:
    """Whatever NAT the peer is behind, and whatever NAT type the offer claims."""
    cost = cost_of_offers(victim)
    assert cost.datagrams <= BUDGET_DATAGRAMS, cost
    assert cost.payload_bytes <= BUDGET_BYTES, cost


def test_addresses_that_never_answer_share_one_budget() -> None:
    """
    A session's PUNCHes to pairs without an ACK stop at the budget; a pair
    the peer's PUNCH came from has a budget of its own, so the candidates
    that never answered cannot starve a path that is about to work.
    """
    keys = SessionKeys.derive(bytes(16), bytes(32), offerer=True)
    remote = [Candidate(CandidateType.SERVER_REFLEXIVE, "100.64.0.1", 40000 + i) for i in range(32)]
    settings = PunchSettings(unanswered_budget=100)
    session = PunchSession(keys, True, [], remote, settings, 0.0)
    sent = [a for i in range(50) for a in session.tick(0.2 * i) if isinstance(a, Send)]
    assert len(sent) == 100
    theirs = SessionKeys.derive(bytes(16), bytes(32), offerer=False)
    _, data = control.punch(theirs, ("192.0.2.1", 5000))
    claimed = control.session_of(data)
    assert claimed is not None
    heard = ("100.64.0.1", 40000)
    session.punch_received(9.0, claimed[0], heard)
    again = [a for a in session.tick(9.2) if isinstance(a, Send)]
    assert [a.to for a in again] == [heard]


def test_new_addresses_are_punched_at_a_bounded_pace() -> None:
    """
    RFC 8445's Ta: the rounds reach addresses not punched yet at one per
    pace after a first burst, best-ranked first, and every one in the end.
    """
    keys = SessionKeys.derive(bytes(16), bytes(32), offerer=True)
    remote = [
        Candidate(CandidateType.SERVER_REFLEXIVE, "100.64.0.1", 40000 + i, priority=1000 - i)
        for i in range(32)
    ]
    settings = PunchSettings(pace=0.01, pace_burst=4)
    session = PunchSession(keys, True, [], remote, settings, 0.0)
    first: dict[tuple[str, int], float] = {}

    def record(now: float, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                first.setdefault(action.to, now)
        reached = sum(1 for when in first.values() if when <= now)
        assert reached <= 4 + now / 0.01 + 1e-6, (now, reached)

    rounds = [0.0, 0.02, 0.06, 0.14, 0.3, 0.5]
    for now, following in itertools.pairwise(rounds):
        record(now, session.tick(now))
        while (due := session.next_pace) is not None and due < following:
            record(due, session.pace(due))
    assert len(first) == 32
    assert sorted(first, key=lambda a: (first[a], a[1])) == [c.address for c in remote]
    assert max(first.values()) == pytest.approx(0.28)


def test_a_flood_of_offers_is_answered_busy_and_counted() -> None:
    """Offers from fresh keys, 100 in a second: the total limit answers "busy", --status counts."""
    w = build_world({"bob": ("port-restricted-cone", sim.PortAllocation.PRESERVING)}, World)
    bob = w.services["bob"]
    refused: list[Failure] = []
    for _ in range(100):
        bob.punching.on_offer(hostile_offer(bob, "bob", None)).addErrback(refused.append)
        w.internet.advance(0.01)
    assert 50 <= len(refused) <= 70
    assert all(f.check(PeerUnavailable) for f in refused)
    assert "busy" in str(refused[0].value)
    assert sum(bob.status()["limited"].values()) == len(refused)
    assert bob.status()["limited"]["too many offers"] >= 50


def test_the_punches_a_stranger_makes_fail_are_logged_briefly_and_at_a_bounded_rate() -> None:
    """
    Thirty offers from fresh keys, each punching addresses that never
    answer: every failure is counted, but only a few are logged, each on a
    short line (a failure's full pair report is for debug), so that
    strangers cannot fill the operator's log.
    """
    w = build_world({"bob": ("port-restricted-cone", sim.PortAllocation.PRESERVING)}, World)
    bob = w.services["bob"]
    with capturedLogs() as events:
        for _ in range(30):
            bob.punching.on_offer(hostile_offer(bob, "bob", None))
            w.internet.advance(0.01)
        w.internet.advance(15.0)
    assert bob.punching.failures.counts["answer failed"] == 30
    warned = [formatEvent(e) for e in events if e.get("log_level") is LogLevel.warn]
    failed = [line for line in warned if line.startswith("could not connect to")]
    assert 1 <= len(failed) <= 6, failed
    assert all(len(line) < 200 for line in failed), failed
    assert "32 pairs tried, none heard from" in failed[0]
