"""
Relayed candidates in the punch: on the simulated internet, with a relay
base standing in for a TURN allocation, and the session's decisions alone.

A relay base is any transport of ours that sits elsewhere on the network:
what a TURN server's relayed address is, seen from the punch.  Here it is
a socket on a public host of the simulated internet, so that every pair of
NAT kinds can be tried in milliseconds; the real TURN server (coturn) and
real NATs are the lab's business (tests/test_relay_lab.py).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.test_punch import PORT, Peer, make_internet, make_peer, punch_both
from twisted_nat import control
from twisted_nat import testing as sim
from twisted_nat.bases import SHARED, Base, relay_base
from twisted_nat.candidates import Candidate, CandidateType, candidate_priority
from twisted_nat.control import SessionKeys
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.nat import MappingBehavior
from twisted_nat.punch import (
    Connected,
    PunchResult,
    PunchSession,
    PunchSettings,
    Send,
    SessionState,
    StartGrace,
)
from twisted_nat.punch.plan import ORDINARY, settings_for
from twisted_nat.rendezvous.hint import NATHint
from twisted_nat.stun.message import Message, MessageClass

RELAY_HOST = "203.0.113.200"
OTHER_RELAY_HOST = "203.0.113.201"


def with_relay(internet: sim.SimulatedInternet, peer: Peer, port: int) -> Base:
    """
    Give C{peer} a relay base on a relay host of its own (ports 40001 and
    40002 stand for two TURN servers), and its relayed candidate.
    """
    host = RELAY_HOST if port == 40001 else OTHER_RELAY_HOST
    relay_mux = UDPMultiplexer()
    internet.add_host(host).listenUDP(port, relay_mux)
    base = relay_base((host, port))
    peer.puncher.bases.add(base, relay_mux)
    peer.candidates.append(Candidate(CandidateType.RELAYED, host, port))
    return base


def only_session(peer: Peer) -> PunchSession:
    [punch_id] = peer.puncher.session_ids()
    session = peer.puncher.session(punch_id)
    assert session is not None
    return session


def results(outcome: list[tuple[bool, Any]]) -> tuple[PunchResult, PunchResult]:
    (ok_a, a), (ok_b, b) = outcome
    assert ok_a and ok_b, (a, b)
    assert isinstance(a, PunchResult) and isinstance(b, PunchResult)
    return a, b


@pytest.mark.parametrize("relays", ["both", "alice", "bob"])
def test_two_symmetric_nats_connect_through_a_relay(relays: str) -> None:
    internet = make_internet()
    alice, bob = make_peer(internet, "symmetric", 1), make_peer(internet, "symmetric", 2)
    if relays in ("both", "alice"):
        with_relay(internet, alice, 40001)
    if relays in ("both", "bob"):
        with_relay(internet, bob, 40002)
    a, b = results(punch_both(internet, alice, bob))
    assert a.relayed and b.relayed
    # One side sends through its relay, the other straight to that relay.
    assert (a.base is SHARED) != (b.base is SHARED) or a.remote.kind is CandidateType.RELAYED
    assert {a.remote.kind, b.remote.kind} & {CandidateType.RELAYED, CandidateType.PEER_REFLEXIVE}
    # The relay was taken only after the relay grace, in case a direct pair came.
    assert a.elapsed >= PunchSettings().relay_grace


def test_two_random_symmetric_nats_take_the_relay_without_its_grace() -> None:
    """
    With the settings the service gives a punch that no direct pair of the
    NATs' public addresses can win (L{settings_for}: both map per
    destination, no technique), the relay is named after the ordinary
    grace, and the session goes on punching for a direct pair (connected,
    not settled).
    """
    internet = make_internet()
    alice, bob = make_peer(internet, "symmetric", 1), make_peer(internet, "symmetric", 2)
    with_relay(internet, alice, 40001)
    with_relay(internet, bob, 40002)
    random = NATHint(MappingBehavior.ADDRESS_AND_PORT_DEPENDENT)
    settings = settings_for(PunchSettings(), random, random, ORDINARY)
    a, b = results(punch_both(internet, alice, bob, settings=settings))
    assert a.relayed and b.relayed
    assert a.elapsed < PunchSettings().relay_grace / 2
    assert only_session(alice).state is SessionState.CONNECTED


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(
    ("kind_a", "kind_b"),
    [("port-restricted", "port-restricted"), ("symmetric", "full"), ("none", "symmetric")],
)
def test_a_relay_is_never_kept_when_a_direct_pair_works(
    kind_a: str, kind_b: str, seed: int
) -> None:
    internet = make_internet(seed=seed, loss=0.1 if seed else 0.0)
    alice, bob = make_peer(internet, kind_a, 1), make_peer(internet, kind_b, 2)
    with_relay(internet, alice, 40001)
    with_relay(internet, bob, 40002)
    a, b = results(punch_both(internet, alice, bob))
    # Whatever the punch settled on first, both ends end up direct: a move
    # from the relay would show as a second result, so check the sessions.
    assert only_session(alice).chosen is not None
    if a.relayed:
        internet.advance(10.0)
    chosen_a = only_session(alice).chosen
    chosen_b = only_session(bob).chosen
    assert chosen_a is not None and chosen_a[0] is SHARED
    assert chosen_b is not None and chosen_b[0] is SHARED
    assert not b.relayed or a.relayed
    if seed == 0:
        assert not a.relayed and not b.relayed, "without loss the direct pair comes first"


def test_symmetric_and_port_restricted_fall_back_to_the_relay() -> None:
    internet = make_internet()
    alice, bob = make_peer(internet, "symmetric", 1), make_peer(internet, "port-restricted", 2)
    with_relay(internet, bob, 40002)
    a, b = results(punch_both(internet, alice, bob))
    assert a.relayed and b.relayed
    assert a.remote.address == (OTHER_RELAY_HOST, 40002)
    assert b.base.relayed and str(b.base) == f"relay {OTHER_RELAY_HOST}:40002"


def test_relay_pairs_skip_the_peers_host_candidates() -> None:
    """A TURN server would relay to a private address on its own network."""
    internet = make_internet()
    alice = make_peer(internet, "port-restricted", 1)
    with_relay(internet, alice, 40001)
    remote = [
        Candidate(CandidateType.HOST, "10.0.0.7", PORT),
        Candidate(CandidateType.SERVER_REFLEXIVE, "198.51.100.9", PORT),
    ]
    alice.puncher.punch_hole(
        PORT, remote, os.urandom(16), secret=os.urandom(32), controlling=True, timeout=0.1
    ).addErrback(lambda _: None)
    pairs = only_session(alice).reports()
    via_relay = [p.remote.address for p in pairs if p.base is not SHARED]
    assert via_relay == [("198.51.100.9", PORT)]
    assert len(pairs) == 3
    internet.advance(1.0)


# --- the session's decisions, event by event ---------------------------------

SECRET = bytes(range(32))
SESSION = bytes(16)
RELAY = relay_base(("203.0.113.200", 40001))
DIRECT = Candidate(CandidateType.SERVER_REFLEXIVE, "198.51.100.2", 5000)
THEIR_RELAY = Candidate(CandidateType.RELAYED, "203.0.113.201", 40002)


def session(controlling: bool) -> PunchSession:
    keys = SessionKeys.derive(SESSION, SECRET, offerer=controlling)
    return PunchSession(keys, controlling, [], [DIRECT, THEIR_RELAY], PunchSettings(), 0.0, [RELAY])


def peer_keys(controlling: bool) -> SessionKeys:
    return SessionKeys.derive(SESSION, SECRET, offerer=not controlling)


def ack_for(send: Send, controlling: bool) -> Message:
    claimed = control.session_of(send.data)
    assert claimed is not None
    punch, _ = claimed
    answer = control.session_of(
        control.punch_ack(peer_keys(controlling), punch.transaction_id, send.to)
    )
    assert answer is not None
    return answer[0]


def sends(actions: list[Any]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def test_session_waits_for_a_direct_pair_then_takes_the_relay_then_moves() -> None:
    s = session(controlling=True)
    first = sends(s.tick(0.0))
    # Direct pairs first; the relay base punches the peer's public candidates.
    assert [(x.base, x.to) for x in first] == [
        (SHARED, DIRECT.address),
        (RELAY, DIRECT.address),
        (SHARED, THEIR_RELAY.address),
        (RELAY, THEIR_RELAY.address),
    ]
    relayed_punch = first[1]
    actions = s.ack_received(0.01, ack_for(relayed_punch, True), DIRECT.address, RELAY)
    assert actions == [StartGrace(PunchSettings().relay_grace)]
    actions = s.grace_over(0.51)
    [confirm, connected] = actions
    assert isinstance(confirm, Send) and confirm.base == RELAY
    assert isinstance(connected, Connected) and connected.result.relayed
    assert s.searching, "connected over a relay, still looking for a direct pair"
    later = sends(s.tick(0.7))
    assert later and all(x.base is SHARED and x.to == DIRECT.address for x in later)
    actions = s.ack_received(0.75, ack_for(later[0], True), DIRECT.address)
    [confirm, moved] = actions
    assert isinstance(confirm, Send) and confirm.base is SHARED and confirm.to == DIRECT.address
    assert isinstance(moved, Connected) and not moved.result.relayed
    assert s.chosen == (SHARED, DIRECT.address)
    assert not s.searching
    assert s.tick(1.0) == []


def test_a_direct_ack_during_the_relay_grace_is_taken_sooner() -> None:
    s = session(controlling=True)
    first = sends(s.tick(0.0))
    assert s.ack_received(0.01, ack_for(first[1], True), DIRECT.address, RELAY) == [StartGrace(0.5)]
    [grace] = s.ack_received(0.02, ack_for(first[0], True), DIRECT.address)
    assert isinstance(grace, StartGrace) and grace.delay < 0.1
    [confirm, connected] = s.grace_over(0.05)
    assert isinstance(connected, Connected) and not connected.result.relayed
    assert connected.result.base is SHARED


def test_session_settles_on_the_relay_when_time_runs_out() -> None:
    s = session(controlling=True)
    first = sends(s.tick(0.0))
    s.ack_received(0.01, ack_for(first[3], True), THEIR_RELAY.address, RELAY)
    s.grace_over(0.51)
    assert s.searching
    assert s.tick(10.0) == []
    assert not s.searching and s.state is SessionState.CONNECTED
    assert s.chosen == (RELAY, THEIR_RELAY.address)


def test_controlled_session_moves_from_a_relay_only_to_a_direct_path() -> None:
    s = session(controlling=False)
    first = sends(s.tick(0.0))
    assert s.ack_received(0.05, ack_for(first[2], False), THEIR_RELAY.address) == []
    [connected] = s.confirm_received(0.1, THEIR_RELAY.address)
    assert isinstance(connected, Connected) and connected.result.relayed
    assert s.ack_received(0.15, ack_for(first[1], False), DIRECT.address, RELAY) == []
    assert s.confirm_received(0.2, DIRECT.address, RELAY) == [], "relay to relay: no gain"
    # Named before it worked for us: checked at once, taken when its ACK comes.
    [check] = s.confirm_received(0.3, DIRECT.address)
    assert isinstance(check, Send) and (check.base, check.to) == (SHARED, DIRECT.address)
    [moved] = s.ack_received(0.35, ack_for(check, False), DIRECT.address)
    assert isinstance(moved, Connected) and not moved.result.relayed
    assert s.chosen == (SHARED, DIRECT.address)
    assert s.confirm_received(0.4, THEIR_RELAY.address) == []


def test_answers_leave_on_the_base_the_punch_came_in_on() -> None:
    s = session(controlling=False)
    theirs = SessionKeys.derive(SESSION, SECRET, offerer=True)
    _, data = control.punch(theirs, ("203.0.113.200", 40001))
    claimed = control.session_of(data)
    assert claimed is not None
    source = ("198.51.100.77", 61000)
    actions = sends(s.punch_received(0.0, claimed[0], source, RELAY))
    assert actions[0].base == RELAY and actions[0].to == source
    # and the unknown source is punched back, on the same base
    assert (actions[1].base, actions[1].to) == (RELAY, source)
    assert candidate_priority(CandidateType.PEER_REFLEXIVE) > DIRECT.priority


def arrival(send: Send) -> tuple[Any, Base]:
    """
    Where a datagram C{send} of one of two L{session}s arrives at the
    other, which names the same candidates: (source, base).
    """
    from_relay, to_relay = send.base == RELAY, send.to == THEIR_RELAY.address
    return (THEIR_RELAY.address if from_relay else DIRECT.address), (RELAY if to_relay else SHARED)


def hand(send: Any, to: PunchSession, now: float) -> list[Any]:
    """Deliver C{send} to the session C{to}, as its puncher would."""
    assert isinstance(send, Send), send
    claimed = control.session_of(send.data)
    assert claimed is not None and control.verify(claimed[0], to.keys)
    message = claimed[0]
    source, base = arrival(send)
    if message.message_class is MessageClass.REQUEST:
        return to.punch_received(now, message, source, base)
    if message.message_class is MessageClass.SUCCESS:
        return to.ack_received(now, message, source, base)
    return to.confirm_received(now, source, base)


def test_a_move_to_a_direct_path_survives_a_lost_confirm() -> None:
    """
    Both connected over the relay; the offerer finds a direct path and
    moves, but its one CONFIRM is lost.  The answerer's next PUNCH on the
    direct pair brings the ACK and the CONFIRM again, and it moves too.
    """
    alice, bob = session(controlling=True), session(controlling=False)
    alices = sends(alice.tick(0.0))
    relayed = next(x for x in alices if (x.base, x.to) == (SHARED, THEIR_RELAY.address))
    ack, check = hand(relayed, bob, 0.05)
    [answer] = hand(check, alice, 0.07)
    assert hand(answer, bob, 0.09) == []
    assert hand(ack, alice, 0.1) == [StartGrace(0.5)]
    confirm, connected = alice.grace_over(0.6)
    assert isinstance(connected, Connected) and connected.result.relayed
    [bob_connected] = hand(confirm, bob, 0.65)
    assert isinstance(bob_connected, Connected) and bob_connected.result.relayed
    # A direct PUNCH gets through and alice moves; her CONFIRM and bob's
    # check are lost.
    direct = next(x for x in sends(alice.tick(1.0)) if x.to == DIRECT.address)
    ack, _lost_check = hand(direct, bob, 1.05)
    _lost_confirm, moved = hand(ack, alice, 1.1)
    assert isinstance(moved, Connected) and not moved.result.relayed
    assert not alice.searching
    # bob keeps punching the direct pair; alice answers with the CONFIRM again.
    [punch] = [x for x in sends(bob.tick(1.2)) if (x.base, x.to) == (SHARED, DIRECT.address)]
    ack, confirm = hand(punch, alice, 1.25)
    assert hand(ack, bob, 1.3) == []
    [bob_moved] = hand(confirm, bob, 1.3)
    assert isinstance(bob_moved, Connected) and not bob_moved.result.relayed
    assert bob.chosen == alice.chosen == (SHARED, DIRECT.address)
