"""
Replays cannot move or revive a path: an on-path observer who captured
authenticated datagrams and sends them again, from its own address or at
a later time, gains nothing.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.test_connection import connected as connected_peers
from tests.test_punch_handshake import (
    ALICE_SRFLX,
    BOB_SRFLX,
    answerer,
    connected,
    deliver,
    offerer,
    sent_to,
)
from twisted_nat import control
from twisted_nat.bases import SHARED
from twisted_nat.punch import Connected, Refused, Send, StartGrace

ATTACKER = ("203.0.113.66", 4444)
"""The observer's own address, from which it sends what it captured."""


def test_an_ack_replayed_from_elsewhere_becomes_no_path() -> None:
    """
    RFC 8445 7.2.5.2.1: a response counts only from where its request
    went.  The observer's copy of bob's ACK, sent first from its own
    address, is refused; the path chosen is bob's, not the observer's.
    """
    alice, bob = offerer(), answerer()
    punch = sent_to(alice.tick(0.0), BOB_SRFLX.address)
    ack, _ = deliver(punch, bob, 0.01, ALICE_SRFLX.address)
    assert deliver(ack, alice, 0.015, ATTACKER) == [
        Refused("a PUNCH_ACK from elsewhere than its PUNCH went")
    ]
    assert ATTACKER not in {r.remote.address for r in alice.reports()}
    [grace] = deliver(ack, alice, 0.02, BOB_SRFLX.address)
    assert isinstance(grace, StartGrace)
    confirm, done = alice.grace_over(0.05)
    assert isinstance(done, Connected) and done.result.remote.address == BOB_SRFLX.address
    assert alice.chosen == (SHARED, BOB_SRFLX.address)


def test_a_replayed_confirm_names_no_path_of_the_observers() -> None:
    """
    A CONFIRM counts only on a pair that has worked for us: sent from the
    observer's address, while bob still chooses, it is refused and costs
    bob nothing.
    """
    alice, bob = offerer(), answerer()
    bob.tick(0.0)
    confirm = Send(control.punch_confirm(alice.keys), BOB_SRFLX.address)
    actions = deliver(confirm, bob, 0.01, ATTACKER)
    assert [type(a) for a in actions] == [Refused]
    assert bob.chosen is None and bob.searching


def test_a_replayed_confirm_after_success_moves_nothing() -> None:
    alice, bob = offerer(), answerer()
    connected(alice, bob)
    confirm = Send(control.punch_confirm(alice.keys), BOB_SRFLX.address)
    assert deliver(confirm, bob, 1.0, ATTACKER) == []
    assert bob.chosen == (SHARED, ALICE_SRFLX.address)


def test_a_replayed_keepalive_does_not_keep_a_dead_path_alive() -> None:
    """
    RFC 7675: only a response to our own fresh request proves the path.
    bob vanishes; an observer replays bob's captured KEEP_ALIVE and ACK
    every 0.5 s, from bob's own address; alice still finds the path dead,
    as soon as without the replays.
    """
    lost_at: dict[str, Any] = {}
    for replaying in (False, True):
        c = connected_peers()
        keeper = c.alice.puncher.keeper
        lost: list[float] = []
        d = c.alice.puncher.maintain_binding(
            c.conn_a, c.conn_a.remote_address, interval=2.0, timeout=0.5
        )
        d.addErrback(_record_time, lost, c.internet.clock)
        c.internet.advance(3.0)
        probe_id, request = control.keepalive(c.conn_b.keys)
        ack = control.keepalive_ack(c.conn_b.keys, probe_id)
        for listening in c.bob.host.ports():
            listening.stopListening()
        for _ in range(60):
            if replaying:
                keeper.datagramReceived(request, c.conn_a.remote_address)
                keeper.datagramReceived(ack, c.conn_a.remote_address)
            c.internet.advance(0.5)
        assert len(lost) == 1, f"never declared lost (replaying: {replaying})"
        lost_at[str(replaying)] = lost[0]
    assert lost_at["True"] == lost_at["False"]


def _record_time(failure: Failure, into: list[float], clock: Clock) -> None:
    into.append(clock.seconds())


def test_a_huge_sequence_number_costs_no_more_than_a_small_one() -> None:
    """A jump of any size clears the window rather than shifting it: one machine word."""
    window = control.ReplayWindow()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        assert window.accept(1)
        assert window.accept(2**62)
        assert window.accept(2**64 - 1)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used < 1024
    assert not window.accept(2**62), "older than the window now"
    assert not window.accept(2**64 - 1), "seen"
    assert window.accept(2**64 - 2)
