"""
A peer is its key, on the simulated internet: what an attacking peer or a
lying rendezvous can and cannot do to peers that use the service.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred

from tests.support.world import Kinds, World, build_world, record_writes
from twisted_nat import testing as sim
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.errors import DuplicateName, KeyMismatch, PeerUnavailable, UnknownPeer
from twisted_nat.rendezvous import Answer, InMemorySignalingHub, LoopbackSignaling, Offer
from twisted_nat.trust import Identity
from twisted_nat.trust.handshake import Offering, answer_offer
from twisted_nat.trust.known import Accept, KnownPeers

PRESERVE = sim.PortAllocation.PRESERVING
CONES: Kinds = {
    "alice": ("port-restricted-cone", PRESERVE),
    "bob": ("restricted-cone", PRESERVE),
}
MALLORY = Identity.generate()
NOWHERE = (Candidate(CandidateType.SERVER_REFLEXIVE, "203.0.113.66", 4666),)


def world(kinds: Kinds = CONES, **options: Any) -> World:
    return build_world(kinds, World, **options)


def failure_of(w: World, d: Deferred[Any]) -> BaseException:
    with pytest.raises(Exception) as raised:
        w.internet.run_until(d, timeout=20)
    return raised.value


def sent_to(sent: list[tuple[float, bytes, Any]], host: str) -> list[bytes]:
    return [data for _, data, address in sent if address[0] == host]


def test_connections_know_the_peer_key_and_status_shows_both_keys():
    w = world()
    alice, bob = w.services["alice"], w.services["bob"]
    connection = w.internet.run_until(alice.connect("bob"))
    w.internet.advance(0.5)  # bob hears the confirmation
    assert connection.peer_key == bob.key
    assert bob.connections["alice"].peer_key == alice.key
    status = alice.status()
    assert status["key"] == alice.key.text
    assert status["connections"][0]["peer_key"] == bob.key.text
    assert status["refused"] == {"bad_signature": 0, "key_mismatch": 0, "not_accepted": 0}
    # Both pinned each other on the way.
    assert alice.trust.known.key_for("bob") == bob.key
    assert bob.trust.known.key_for("alice") == alice.key


def test_a_peer_is_reached_by_key_alone_and_a_wrong_key_reaches_nobody():
    w = world()
    alice, bob = w.services["alice"], w.services["bob"]
    connection = w.internet.run_until(alice.connect(key=bob.key))
    assert connection.peer == "bob" and connection.peer_key == bob.key
    w.internet.run_until(alice.connect("bob", key=bob.key))
    error = failure_of(w, alice.connect("bob", key=MALLORY.public))
    assert isinstance(error, KeyMismatch)
    assert "bob" in str(error) and MALLORY.public.short in str(error)


def test_an_attacker_who_registered_the_name_first_is_refused_and_sent_nothing():
    """
    Mallory registered "bob" before bob; alice, who pinned bob's key, gets
    an error from the rendezvous and sends mallory not one datagram.
    """
    real_bob = Identity.generate()
    known = KnownPeers()
    known.pin("bob", real_bob.public)
    w = world(peer_options={"alice": {"known_peers": known}})
    alice, mallory = w.services["alice"], w.services["bob"]  # the "bob" here is mallory
    sent = record_writes(alice, w.internet)
    error = failure_of(w, alice.connect("bob"))
    assert isinstance(error, UnknownPeer)
    assert sent_to(sent, "198.51.100.2") == []
    assert "bob" not in alice.connections and "alice" not in mallory.connections


class RedirectingHub(InMemorySignalingHub):
    """
    A rendezvous that, once C{redirect} is set, sends every offer meant for
    bob to mallory instead.
    """

    redirect = False

    def _deliver(self, offer: Offer, sender: LoopbackSignaling) -> Deferred[Answer]:
        if self.redirect and offer.to_name == "bob" and offer.from_name != "mallory":
            target = next(p for p in self._peers.values() if p.peer_name == "mallory")
            return target._receive(offer)
        return super()._deliver(offer, sender)


def test_a_redirecting_rendezvous_gets_no_connection_and_both_sides_say_so():
    """
    The server hands alice's offer for bob to mallory, who answers as
    herself, and offers to bob in alice's name; alice and bob, who know
    each other's keys, both refuse, count and log the mismatch.
    """
    w = world(hub_type=RedirectingHub)
    alice, bob = w.services["alice"], w.services["bob"]
    w.internet.run_until(alice.connect("bob"))  # they meet once: both pin
    w.internet.advance(0.5)
    alice.close("bob")
    bob.close("alice")
    w.internet.advance(1.0)
    hub = w.hub
    assert isinstance(hub, RedirectingHub)
    hub.redirect = True
    mallory = hub.peer("mallory", MALLORY)
    forged: list[Deferred[Answer]] = []

    def attack(offer: Offer) -> Answer:
        in_alices_name = Offering(MALLORY, "alice", NOWHERE, None, "bob", bob.key).offer
        forged.append(bob.signaling._receive(in_alices_name))
        return answer_offer(MALLORY, "bob", offer, NOWHERE)[0]

    mallory.set_offer_handler(attack)
    sent = record_writes(alice, w.internet)
    error = failure_of(w, alice.connect("bob"))
    assert isinstance(error, KeyMismatch)
    assert isinstance(failure_of(w, forged[0]), PeerUnavailable)
    assert alice.trust.stats.key_mismatch == 1
    assert bob.trust.stats.key_mismatch == 1
    assert alice.connections.get("bob") is None or alice.connections["bob"].closed
    assert "alice" not in bob.connections or bob.connections["alice"].closed
    assert sent_to(sent, NOWHERE[0].host) == []


def test_an_offer_cannot_move_an_existing_connection_to_another_key():
    """
    bob's rendezvous connection blips; mallory cannot take his name, and an
    offer in his name with her key (from a lying server) changes nothing.
    """
    w = world()
    alice, bob = w.services["alice"], w.services["bob"]
    connection = w.internet.run_until(alice.connect("bob"))
    path, keys = connection.remote_address, connection.keys
    w.internet.run_until(bob.signaling.close())
    taker = w.hub.peer(None, MALLORY)
    with pytest.raises(DuplicateName):
        w.internet.run_until(taker.register("bob"))
    forged = Offering(MALLORY, "bob", NOWHERE, None, "alice", alice.key).offer
    refused = failure_of(w, alice.signaling._receive(forged))
    assert isinstance(refused, PeerUnavailable)
    assert str(refused) == "the peer refused the offer", "why is for alice's log only"
    w.internet.advance(5.0)
    assert alice.connections["bob"] is connection
    assert (connection.remote_address, connection.keys) == (path, keys)
    assert connection.peer_key == bob.key
    assert alice.trust.stats.key_mismatch == 1


def test_a_peer_that_accepts_known_keys_only_refuses_strangers():
    w = world(peer_options={"bob": {"known_peers": KnownPeers(accept=Accept.KNOWN)}})
    alice, bob = w.services["alice"], w.services["bob"]
    assert isinstance(failure_of(w, alice.connect("bob")), PeerUnavailable)
    assert bob.trust.stats.not_accepted == 1 and bob.connections == {}
    bob.trust.known.pin("alice", alice.key)
    w.internet.run_until(alice.connect("bob"))
    w.internet.advance(0.5)
    assert bob.connections["alice"].peer_key == alice.key


def test_application_data_never_appears_on_the_wire():
    w = world()
    alice = w.services["alice"]
    connection = w.internet.run_until(alice.connect("bob"))
    sent = record_writes(alice, w.internet)
    secret = b"pay to IBAN DE00 1111 2222 3333 4444 00"
    connection.write(secret)
    w.internet.advance(0.5)
    assert [data for data, _ in w.apps["bob"][0].received] == [secret]
    datagrams = [data for _, data, _ in sent]
    assert datagrams
    for datagram in datagrams:
        for start in range(len(secret) - 7):
            assert secret[start : start + 8] not in datagram
