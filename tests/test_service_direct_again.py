"""
A connection that fell back to a relay after its direct path was lost
punches again for a direct path, on the simulated internet.  The fallback
is made by hand (the service's connections hear a relayed punch result for
the peer, as after a lost path), so no TURN server is needed; the punch
again is the service's own, through the rendezvous.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer

from tests.support.world import World, build_world
from twisted_nat import testing as sim
from twisted_nat.errors import RendezvousUnavailable
from twisted_nat.punch import PunchResult
from twisted_nat.service.connections import DIRECT_AGAIN
from twisted_nat.trust import Identity

PRESERVE = sim.PortAllocation.PRESERVING


def world() -> World:
    # No keep-alive: the hand-made relayed session was never punched, and
    # its keys are unknown to the peer.
    return build_world(
        {"alice": ("port-restricted-cone", PRESERVE), "bob": ("restricted-cone", PRESERVE)},
        World,
        enable_keepalive=False,
    )


def counted_offers(service: Any, failing: int = 0) -> list[str]:
    """Count C{service}'s offers; the first C{failing} fail as if the rendezvous were gone."""
    offers: list[str] = []
    working = service.signaling.connect

    def connect(offer: Any) -> Any:
        offers.append(offer.to_name)
        if len(offers) <= failing:
            return defer.fail(RendezvousUnavailable("no connection to the rendezvous server"))
        return working(offer)

    service.signaling.connect = connect
    return offers


def fall_back(service: Any, peer: str) -> Any:
    """The connection to C{peer} rebinds to a relayed path, as when a lost path is punched again."""
    connection = service.connections[peer]
    relayed = PunchResult(connection.remote, connection.local_kind, 0.02, 0.5, (), relayed=True)
    service.links.connected(
        peer, connection.peer_key, os.urandom(16), os.urandom(32), relayed, controlling=True
    )
    assert connection.relayed
    return connection


def test_a_connection_that_fell_back_to_a_relay_punches_again_for_a_direct_path() -> None:
    w = world()
    alice, bob = w.services["alice"], w.services["bob"]
    connection = w.internet.run_until(alice.connect("bob"))
    assert not connection.relayed
    offers = counted_offers(alice)
    answerer = counted_offers(bob)
    fall_back(alice, "bob")
    w.internet.advance(DIRECT_AGAIN(0) - 1)
    assert offers == [] and connection.relayed
    w.internet.advance(2.0)
    assert offers == ["bob"]
    assert not connection.relayed, "the new punch found the direct path"
    connection.write(b"direct again")
    w.internet.advance(0.1)
    assert [d for d, _ in w.apps["bob"][0].received] == [b"direct again"]
    assert [c.peer for c in alice.connections.values()] == ["bob"]
    w.internet.advance(600.0)
    assert offers == ["bob"], "once direct, no more punching"
    assert answerer == [], "only the offerer punches again"


def test_failed_attempts_at_a_direct_path_back_off() -> None:
    w = world()
    alice = w.services["alice"]
    connection = w.internet.run_until(alice.connect("bob"))
    offers = counted_offers(alice, failing=2)
    fall_back(alice, "bob")
    w.internet.advance(DIRECT_AGAIN(0) + 0.5)
    assert len(offers) == 1 and connection.relayed
    w.internet.advance(DIRECT_AGAIN(1) - 1)
    assert len(offers) == 1
    w.internet.advance(2.0)
    assert len(offers) == 2 and connection.relayed
    w.internet.advance(DIRECT_AGAIN(2) + 1)
    assert len(offers) == 3 and not connection.relayed


def test_a_connection_relayed_from_its_start_does_not_punch_again() -> None:
    w = world()
    alice = w.services["alice"]
    bob = w.internet.run_until(alice.connect("bob"))
    offers = counted_offers(alice)
    carol = Identity.generate().public
    alice.links.offered("carol", carol)
    relayed = PunchResult(bob.remote, bob.local_kind, 0.02, 0.5, (), relayed=True)
    connection = alice.links.connected(
        "carol", carol, os.urandom(16), os.urandom(32), relayed, controlling=True
    )
    w.internet.advance(600.0)
    assert offers == [] and connection.relayed


def test_closing_the_connection_stops_the_attempts() -> None:
    w = world()
    alice = w.services["alice"]
    connection = w.internet.run_until(alice.connect("bob"))
    offers = counted_offers(alice)
    fall_back(alice, "bob")
    alice.links.close(connection)
    w.internet.advance(600.0)
    assert offers == []


def test_a_lost_path_punched_again_meanwhile_carries_the_count_on() -> None:
    w = world()
    alice = w.services["alice"]
    connection = w.internet.run_until(alice.connect("bob"))
    offers = counted_offers(alice)
    fall_back(alice, "bob")
    connection.reconnecting = True  # the relayed path was lost too, and is being punched again
    w.internet.advance(DIRECT_AGAIN(0) + 1)
    assert offers == [], "the punch for the lost path goes first"
    fall_back(alice, "bob")  # it ended on the relay again
    w.internet.advance(DIRECT_AGAIN(1) - 1)
    assert offers == []
    w.internet.advance(2.0)
    assert offers == ["bob"] and not connection.relayed
