"""
The ordinary punch handshake, event by event: two L{PunchSession}s, the
offerer's (controlling) and the answerer's, with every datagram carried by
hand between them and the time given explicitly.  No clock, no socket:
L{deliver} does what the puncher does with a datagram that arrived (decode,
verify, dispatch by class), and the test decides what arrives, when, and
from which address (where a NAT would have translated it).

alice offers and bob answers; each has a host candidate on its own LAN and
a server-reflexive one on its NAT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from twisted_nat import control
from twisted_nat.address import Address
from twisted_nat.bases import SHARED, Base, relay_base
from twisted_nat.candidates import Candidate, CandidateType, candidate_priority
from twisted_nat.control import Destination, SessionKeys
from twisted_nat.punch import Connected, Failed, PunchSession, PunchSettings, Send, StartGrace
from twisted_nat.stun.attributes import XorMappedAddress
from twisted_nat.stun.message import Message, MessageClass

SECRET = bytes(range(32))
SESSION = bytes(range(100, 116))
ALICE_HOST = Candidate(CandidateType.HOST, "192.0.2.11", 5000)
ALICE_SRFLX = Candidate(CandidateType.SERVER_REFLEXIVE, "198.51.100.1", 40001)
BOB_HOST = Candidate(CandidateType.HOST, "192.0.2.12", 5000)
BOB_SRFLX = Candidate(CandidateType.SERVER_REFLEXIVE, "198.51.100.2", 40002)
BOB_FRESH = ("198.51.100.2", 61000)
"""A port of bob's NAT no candidate names: a symmetric NAT's mapping towards alice."""
RELAY = relay_base(("203.0.113.200", 40001))

KIND = {
    MessageClass.REQUEST: "PUNCH",
    MessageClass.SUCCESS: "ACK",
    MessageClass.INDICATION: "CONFIRM",
}


def offerer(settings: PunchSettings | None = None, started: float = 0.0) -> PunchSession:
    """alice's session, controlling."""
    keys = SessionKeys.derive(SESSION, SECRET, offerer=True)
    local, remote = [ALICE_HOST, ALICE_SRFLX], [BOB_HOST, BOB_SRFLX]
    return PunchSession(keys, True, local, remote, settings or PunchSettings(), started)


def answerer(relays: Sequence[Base] = (), started: float = 0.0) -> PunchSession:
    """bob's session, controlled."""
    keys = SessionKeys.derive(SESSION, SECRET, offerer=False)
    local, remote = [BOB_HOST, BOB_SRFLX], [ALICE_HOST, ALICE_SRFLX]
    return PunchSession(keys, False, local, remote, PunchSettings(), started, relays)


PEERS_KEYS = (
    SessionKeys.derive(SESSION, SECRET, offerer=True),
    SessionKeys.derive(SESSION, SECRET, offerer=False),
)


def read(send: object, receiver: PunchSession | None = None) -> Message:
    """
    The control message C{send} carries, checked to be this session's and
    signed: for C{receiver}, when given, as its puncher checks it; else by
    one of the two peers, for the other.
    """
    assert isinstance(send, Send), send
    claimed = control.session_of(send.data)
    assert claimed is not None, send
    message, session_id = claimed
    assert session_id == SESSION and message.method == control.PUNCH
    receiving = PEERS_KEYS if receiver is None else (receiver.keys,)
    assert [control.verify(message, keys) for keys in receiving].count(True) == 1
    return message


def what(actions: list[Any]) -> list[Any]:
    """
    The actions, legibly: a send as (message, to, base), a grace as
    ("StartGrace", its delay to the nanosecond), a connection as
    ("Connected", remote address, base), a failure as "Failed".
    """
    legible: list[Any] = []
    for action in actions:
        if isinstance(action, Send):
            legible.append((KIND[read(action).message_class], action.to, action.base))
        elif isinstance(action, Connected):
            legible.append(("Connected", action.result.remote.address, action.result.base))
        elif isinstance(action, StartGrace):
            legible.append(("StartGrace", round(action.delay, 9)))
        else:
            assert isinstance(action, Failed), action
            legible.append("Failed")
    return legible


def deliver(
    send: object, session: PunchSession, now: float, source: Address, base: Base = SHARED
) -> list[Any]:
    """
    C{send} arrives at C{session} at C{now}, from C{source} (after the
    sender's NAT), on our base C{base}: what the puncher would tell it.
    """
    message = read(send, session)
    if message.message_class is MessageClass.REQUEST:
        return session.punch_received(now, message, source, base)
    if message.message_class is MessageClass.SUCCESS:
        return session.ack_received(now, message, source, base)
    return session.confirm_received(now, source, base)


def sent_to(actions: list[Any], address: Address) -> Send:
    """The one send of C{actions} to C{address}."""
    [send] = [a for a in actions if isinstance(a, Send) and a.to == address]
    return send


def connected(alice: PunchSession, bob: PunchSession) -> tuple[list[Any], list[Any]]:
    """
    The shortest handshake, over alice's and bob's server-reflexive
    candidates; returns each one's first round of PUNCHes.
    """
    alices, bobs = alice.tick(0.0), bob.tick(0.0)
    ack, check = deliver(sent_to(alices, BOB_SRFLX.address), bob, 0.01, ALICE_SRFLX.address)
    # bob checks the pair at once (ICE's triggered check), so that he can take the CONFIRM.
    [answer] = deliver(check, alice, 0.015, BOB_SRFLX.address)
    assert deliver(answer, bob, 0.02, ALICE_SRFLX.address) == []
    deliver(ack, alice, 0.02, BOB_SRFLX.address)
    confirm = sent_to(alice.grace_over(0.04), BOB_SRFLX.address)
    deliver(confirm, bob, 0.05, ALICE_SRFLX.address)
    assert alice.chosen == (SHARED, BOB_SRFLX.address)
    assert bob.chosen == (SHARED, ALICE_SRFLX.address)
    return alices, bobs


# --- the handshake, step by step ---


def test_the_first_round_punches_every_candidate_in_rank_order() -> None:
    """Host before server-reflexive, whatever the order given; each PUNCH names its target."""
    keys = SessionKeys.derive(SESSION, SECRET, offerer=True)
    alice = PunchSession(keys, True, [], [BOB_SRFLX, BOB_HOST], PunchSettings(), 0.0)
    first = alice.tick(0.0)
    assert what(first) == [
        ("PUNCH", BOB_HOST.address, SHARED),
        ("PUNCH", BOB_SRFLX.address, SHARED),
    ]
    for send in first:
        destination = read(send).get(Destination)
        assert destination is not None and destination.address == send.to
    assert len({read(send).transaction_id for send in first}) == 2


@pytest.mark.parametrize("base", [SHARED, RELAY], ids=["shared-socket", "relay"])
def test_a_punch_is_acknowledged_on_the_base_it_arrived_on(base: Base) -> None:
    """
    The ACK goes back to where the PUNCH came from, on the base it came
    in on, with the PUNCH's transaction id and the address it came from.
    """
    alice, bob = offerer(), answerer([RELAY])
    punch = sent_to(alice.tick(0.0), BOB_SRFLX.address)
    actions = deliver(punch, bob, 0.01, ALICE_SRFLX.address, base)
    assert what(actions) == [
        ("ACK", ALICE_SRFLX.address, base),
        ("PUNCH", ALICE_SRFLX.address, base),
    ], "and a PUNCH back, to check the pair for himself"
    ack = read(actions[0])
    assert ack.transaction_id == read(punch).transaction_id
    mapped = ack.get(XorMappedAddress)
    assert mapped is not None and mapped.address == ALICE_SRFLX.address


@pytest.mark.parametrize(("rtt", "delay"), [(0.001, 0.005), (0.008, 0.016), (0.1, 0.03)])
def test_an_ack_makes_a_valid_pair_and_the_offerer_waits_a_grace(rtt: float, delay: float) -> None:
    """
    The offerer's first working pair starts a grace period of twice its
    round trip, within 5 ms and L{PunchSettings.grace} (30 ms), for a
    better-ranked pair to work too; it names no pair yet.
    """
    alice, bob = offerer(), answerer()
    punch = sent_to(alice.tick(0.0), BOB_SRFLX.address)
    ack, _ = deliver(punch, bob, rtt / 2, ALICE_SRFLX.address)
    [grace] = deliver(ack, alice, rtt, BOB_SRFLX.address)
    assert isinstance(grace, StartGrace) and grace.delay == pytest.approx(delay)
    assert alice.chosen is None and alice.searching
    [report] = [r for r in alice.reports() if r.remote == BOB_SRFLX]
    assert (report.punches_sent, report.acks_received) == (1, 1)


def test_the_answerer_notes_a_working_pair_and_waits_for_the_offerers_choice() -> None:
    alice, bob = offerer(), answerer()
    punch = sent_to(bob.tick(0.0), ALICE_SRFLX.address)
    [ack] = deliver(punch, alice, 0.01, BOB_SRFLX.address)
    assert deliver(ack, bob, 0.02, ALICE_SRFLX.address) == [], "no grace, no CONFIRM"
    assert bob.chosen is None and bob.searching
    [report] = [r for r in bob.reports() if r.remote == ALICE_SRFLX]
    assert report.acks_received == 1
    confirm = Send(control.punch_confirm(bob.keys), ALICE_SRFLX.address)
    assert deliver(confirm, alice, 0.03, BOB_SRFLX.address) == [], "the offerer chooses"
    assert alice.chosen is None and alice.searching


def test_an_ack_for_a_punch_never_sent_is_ignored() -> None:
    alice = offerer()
    alice.tick(0.0)
    bobs = SessionKeys.derive(SESSION, SECRET, offerer=False)
    forged = control.punch_ack(bobs, bytes(12), ALICE_SRFLX.address)
    assert deliver(Send(forged, ALICE_SRFLX.address), alice, 0.01, BOB_SRFLX.address) == []
    assert [(r.remote, r.acks_received) for r in alice.reports()] == [(BOB_HOST, 0), (BOB_SRFLX, 0)]


def test_after_the_grace_the_offerer_confirms_its_pair_and_is_connected() -> None:
    alice, bob = offerer(), answerer()
    punch = sent_to(alice.tick(0.0), BOB_SRFLX.address)
    ack, _ = deliver(punch, bob, 0.01, ALICE_SRFLX.address)
    deliver(ack, alice, 0.02, BOB_SRFLX.address)
    actions = alice.grace_over(0.04)
    assert what(actions) == [
        ("CONFIRM", BOB_SRFLX.address, SHARED),
        ("Connected", BOB_SRFLX.address, SHARED),
    ]
    result = actions[1].result
    assert result is alice.result
    assert result.remote == BOB_SRFLX and result.local_kind is CandidateType.SERVER_REFLEXIVE
    assert result.rtt == pytest.approx(0.02) and result.elapsed == pytest.approx(0.04)
    assert not result.relayed
    assert alice.chosen == (SHARED, BOB_SRFLX.address)
    assert not alice.searching
    assert alice.tick(0.2) == [], "no more PUNCHes once connected directly"


def test_the_confirm_connects_the_answerer_on_the_path_it_came_by() -> None:
    alice, bob = offerer(), answerer()
    connected(alice, bob)
    result = bob.result
    assert result is not None
    assert result.remote == ALICE_SRFLX and result.base is SHARED and not result.relayed
    assert result.local_kind is CandidateType.SERVER_REFLEXIVE, "from the PUNCH's destination"
    assert result.elapsed == pytest.approx(0.05)
    assert not bob.searching
    assert bob.tick(0.2) == []
    confirm = Send(control.punch_confirm(alice.keys), ALICE_SRFLX.address)
    assert deliver(confirm, bob, 0.3, ALICE_SRFLX.address) == [], "a repeated CONFIRM"
    theirs = Send(control.punch_confirm(bob.keys), BOB_SRFLX.address)
    assert deliver(theirs, alice, 0.3, BOB_SRFLX.address) == [], "the offerer takes none"


def test_the_whole_handshake_with_the_first_punches_lost() -> None:
    """
    Each NAT drops what arrives before its own peer punched out of it:
    alice's first PUNCHes are lost, bob's reach her through the hole hers
    opened, and the handshake completes on her next round.
    """
    alice, bob = offerer(), answerer(started=0.005)
    assert len(alice.tick(0.0)) == 2  # the host PUNCH goes nowhere, the other is dropped
    bobs = bob.tick(0.005)
    assert what(bobs) == [
        ("PUNCH", ALICE_HOST.address, SHARED),
        ("PUNCH", ALICE_SRFLX.address, SHARED),
    ]
    actions = deliver(sent_to(bobs, ALICE_SRFLX.address), alice, 0.01, BOB_SRFLX.address)
    assert what(actions) == [("ACK", BOB_SRFLX.address, SHARED)], "a known address: no PUNCH back"
    assert deliver(actions[0], bob, 0.015, ALICE_SRFLX.address) == []
    second = alice.tick(0.02)
    assert what(second) == [
        ("PUNCH", BOB_HOST.address, SHARED),
        ("PUNCH", BOB_SRFLX.address, SHARED),
    ]
    [ack] = deliver(sent_to(second, BOB_SRFLX.address), bob, 0.025, ALICE_SRFLX.address)
    assert what(deliver(ack, alice, 0.03, BOB_SRFLX.address)) == [("StartGrace", 0.02)]
    confirm, done = alice.grace_over(0.05)
    assert what([confirm, done]) == [
        ("CONFIRM", BOB_SRFLX.address, SHARED),
        ("Connected", BOB_SRFLX.address, SHARED),
    ]
    assert what(deliver(confirm, bob, 0.055, ALICE_SRFLX.address)) == [
        ("Connected", ALICE_SRFLX.address, SHARED)
    ]
    assert bob.result is not None and bob.result.rtt == pytest.approx(0.01)
    assert bob.result.elapsed == pytest.approx(0.05)
    assert alice.result is not None and alice.result.rtt == pytest.approx(0.01)
    assert alice.result.elapsed == pytest.approx(0.05)
    assert [
        (r.remote, r.punches_sent, r.punches_received, r.acks_received) for r in alice.result.pairs
    ] == [(BOB_HOST, 2, 0, 0), (BOB_SRFLX, 2, 1, 1)]


@pytest.mark.parametrize("host_first", [False, True], ids=["srflx-first", "host-first"])
def test_of_two_working_pairs_the_better_ranked_is_chosen(host_first: bool) -> None:
    """On one LAN both pairs work; the host pair wins whichever answered first."""
    alice, bob = offerer(), answerer()
    first = alice.tick(0.0)
    arrivals = [(BOB_SRFLX, ALICE_SRFLX), (BOB_HOST, ALICE_HOST)]
    if host_first:
        arrivals.reverse()
    graces = []
    for i, (theirs, ours) in enumerate(arrivals):
        ack, _ = deliver(sent_to(first, theirs.address), bob, 0.002 + 0.001 * i, ours.address)
        graces.append(deliver(ack, alice, 0.004 + 0.001 * i, theirs.address))
    assert [what(g) for g in graces] == [[("StartGrace", 0.008)], []], "one grace, from the first"
    assert what(alice.grace_over(0.02)) == [
        ("CONFIRM", BOB_HOST.address, SHARED),
        ("Connected", BOB_HOST.address, SHARED),
    ]
    assert alice.result is not None
    assert alice.result.rtt == pytest.approx(0.004 if host_first else 0.005)


def test_each_candidate_is_punched_at_most_max_retries_times() -> None:
    alice = offerer(PunchSettings(max_retries=3))
    rounds = [what(alice.tick(0.2 * i)) for i in range(6)]
    every = [("PUNCH", BOB_HOST.address, SHARED), ("PUNCH", BOB_SRFLX.address, SHARED)]
    assert rounds == [every, every, every, [], [], []]
    assert [r.punches_sent for r in alice.reports()] == [3, 3]
    assert alice.searching, "out of retries is not out of time"


def test_at_the_timeout_the_session_fails_with_what_each_pair_saw() -> None:
    alice, bob = offerer(PunchSettings(timeout=1.0), started=5.0), answerer(started=5.0)
    punch = sent_to(bob.tick(5.0), ALICE_SRFLX.address)
    [ack] = deliver(punch, alice, 5.01, BOB_SRFLX.address)
    for i in range(5):
        assert len(alice.tick(5.0 + 0.2 * i)) == 2
    [failed] = alice.tick(6.0)
    assert isinstance(failed, Failed)
    error = failed.error
    assert error.elapsed == pytest.approx(1.0)
    assert [
        (r.remote, r.base, r.punches_sent, r.punches_received, r.acks_received) for r in error.pairs
    ] == [(BOB_HOST, SHARED, 5, 0, 0), (BOB_SRFLX, SHARED, 5, 1, 0)]
    assert str(error) == (
        "hole punching failed after 1.0s (host 192.0.2.12:5000: sent 5, got 0 punches and 0 acks;"
        " srflx 198.51.100.2:40002: sent 5, got 1 punches and 0 acks)"
    )
    assert not alice.searching and alice.chosen is None
    assert alice.tick(6.2) == [] and alice.grace_over(6.2) == []


def test_the_timeout_falls_on_the_round_that_reaches_it() -> None:
    """The round due at the timeout fails, though the delays summed fall short of it."""
    alice = offerer(PunchSettings(timeout=1.0))
    assert len(alice.tick(0.99)) == 2
    at_timeout = sum([0.1] * 10)
    assert at_timeout < 1.0
    assert what(alice.tick(at_timeout)) == ["Failed"]


def test_a_punch_from_an_unknown_address_is_punched_back_at_once() -> None:
    """
    bob's symmetric NAT gave his PUNCH to alice a port no candidate names:
    alice answers it and punches that peer-reflexive address at once, and
    the path through it is the one chosen.
    """
    alice, bob = offerer(), answerer()
    alice.tick(0.0)
    punch = sent_to(bob.tick(0.0), ALICE_SRFLX.address)
    actions = deliver(punch, alice, 0.01, BOB_FRESH)
    assert what(actions) == [("ACK", BOB_FRESH, SHARED), ("PUNCH", BOB_FRESH, SHARED)]
    destination = read(actions[1]).get(Destination)
    assert destination is not None and destination.address == BOB_FRESH
    ack, _ = deliver(actions[1], bob, 0.012, ALICE_SRFLX.address)
    assert what(deliver(ack, alice, 0.015, BOB_FRESH)) == [("StartGrace", 0.01)]
    again = sent_to(bob.tick(0.02), ALICE_SRFLX.address)
    assert what(deliver(again, alice, 0.021, BOB_FRESH)) == [("ACK", BOB_FRESH, SHARED)]
    assert what(alice.grace_over(0.025)) == [
        ("CONFIRM", BOB_FRESH, SHARED),
        ("Connected", BOB_FRESH, SHARED),
    ]
    assert alice.result is not None
    remote = alice.result.remote
    assert remote.kind is CandidateType.PEER_REFLEXIVE and remote.address == BOB_FRESH
    assert remote.priority == candidate_priority(CandidateType.PEER_REFLEXIVE)
    [report] = [r for r in alice.result.pairs if r.remote == remote]
    assert (report.punches_sent, report.punches_received, report.acks_received) == (1, 2, 1)


# --- after success ---


def test_a_late_punch_is_answered_after_success() -> None:
    """
    A connected session keeps answering: the peer may not have heard our
    ACK, or (for the offerer) our CONFIRM, which goes again with the ACK
    on the chosen path only.
    """
    alice, bob = offerer(), answerer()
    alices, bobs = connected(alice, bob)
    duplicate = sent_to(alices, BOB_SRFLX.address)
    actions = deliver(duplicate, bob, 1.0, ALICE_SRFLX.address)
    assert what(actions) == [("ACK", ALICE_SRFLX.address, SHARED)]
    assert read(actions[0]).transaction_id == read(duplicate).transaction_id
    on_path = deliver(sent_to(bobs, ALICE_SRFLX.address), alice, 1.0, BOB_SRFLX.address)
    assert what(on_path) == [
        ("ACK", BOB_SRFLX.address, SHARED),
        ("CONFIRM", BOB_SRFLX.address, SHARED),
    ]
    off_path = deliver(sent_to(bobs, ALICE_HOST.address), alice, 1.0, BOB_HOST.address)
    assert what(off_path) == [("ACK", BOB_HOST.address, SHARED)]


def test_a_late_ack_brings_the_confirm_again_on_the_chosen_path_only() -> None:
    alice, bob = offerer(), answerer()
    first = alice.tick(0.0)
    ack, _ = deliver(sent_to(first, BOB_SRFLX.address), bob, 0.01, ALICE_SRFLX.address)
    deliver(ack, alice, 0.02, BOB_SRFLX.address)
    alice.grace_over(0.04)
    assert what(deliver(ack, alice, 0.5, BOB_SRFLX.address)) == [
        ("CONFIRM", BOB_SRFLX.address, SHARED)
    ]
    host_ack, _ = deliver(sent_to(first, BOB_HOST.address), bob, 0.5, ALICE_HOST.address)
    assert deliver(host_ack, alice, 0.51, BOB_HOST.address) == [], "not the chosen path"
    bobs = SessionKeys.derive(SESSION, SECRET, offerer=False)
    unknown = Send(control.punch_ack(bobs, bytes(12), ALICE_SRFLX.address), ALICE_SRFLX.address)
    assert deliver(unknown, alice, 0.52, BOB_SRFLX.address) == [], "an id it never sent"


@pytest.mark.parametrize("punch_first", [False, True], ids=["ack-first", "punch-first"])
def test_the_best_pair_is_named_at_once_once_the_peer_has_it_too(punch_first: bool) -> None:
    """
    Nothing ranks above the host pair: the offerer names it without a
    grace, but only once the peer's PUNCH came by it, so that the ACK it
    answered with reaches the peer ahead of the CONFIRM and the peer is
    connected by the CONFIRM itself (data sent at once is not dropped).
    """
    alice = offerer()
    bob = PunchSession(
        SessionKeys.derive(SESSION, SECRET, offerer=False),
        False,
        [BOB_HOST],
        [ALICE_HOST],
        PunchSettings(),
        0.0,
    )
    alice_punch, bob_punch = sent_to(alice.tick(0.0), BOB_HOST.address), bob.tick(0.0)
    acks_to_bob = []
    if punch_first:
        acks_to_bob = deliver(
            sent_to(bob_punch, ALICE_HOST.address), alice, 0.001, BOB_HOST.address
        )
    ack, *_ = deliver(alice_punch, bob, 0.001, ALICE_HOST.address)
    on_ack = deliver(ack, alice, 0.002, BOB_HOST.address)
    if punch_first:
        assert what(on_ack) == [("StartGrace", 0.0)]
    else:
        assert what(on_ack) == [("StartGrace", 0.005)], "bob's PUNCH has not come yet"
        acks_to_bob = deliver(
            sent_to(bob_punch, ALICE_HOST.address), alice, 0.003, BOB_HOST.address
        )
        assert what(acks_to_bob)[-1] == ("StartGrace", 0.0), "now the grace may end"
    confirm, _ = alice.grace_over(0.003)
    for answer in [a for a in acks_to_bob if isinstance(a, Send)]:
        deliver(answer, bob, 0.004, ALICE_HOST.address)
    assert what(deliver(confirm, bob, 0.005, ALICE_HOST.address)) == [
        ("Connected", ALICE_HOST.address, SHARED)
    ]
