"""Hole punching on the simulated internet: every pair of NAT kinds, loss, attackers."""

from __future__ import annotations

import os
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import DatagramProtocol

from twisted_nat import testing as sim
from twisted_nat.candidates import Candidate, CandidateType, host_candidates
from twisted_nat.control import SessionKeys, punch
from twisted_nat.errors import ConfigurationError
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.punch import HolePuncher, PunchFailed, PunchResult, PunchSettings
from twisted_nat.stun.client import STUNClient
from twisted_nat.stun.message import MessageClass, Method
from twisted_nat.stun.server import BindingServer

SERVER = ("203.0.113.10", 3478)
PORT = 5000

NATS: dict[str, tuple[sim.MappingBehavior, sim.FilteringBehavior] | None] = {
    "none": None,
    "full": (sim.MappingBehavior.ENDPOINT_INDEPENDENT, sim.FilteringBehavior.ENDPOINT_INDEPENDENT),
    "restricted": (
        sim.MappingBehavior.ENDPOINT_INDEPENDENT,
        sim.FilteringBehavior.ADDRESS_DEPENDENT,
    ),
    "port-restricted": (
        sim.MappingBehavior.ENDPOINT_INDEPENDENT,
        sim.FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
    ),
    "symmetric": (
        sim.MappingBehavior.ADDRESS_AND_PORT_DEPENDENT,
        sim.FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT,
    ),
}

CONNECTABLE = [
    (a, b)
    for a in NATS
    for b in NATS
    if not ("symmetric" in (a, b) and {a, b} & {"port-restricted", "symmetric"})
]
HARD = [("symmetric", "port-restricted"), ("port-restricted", "symmetric")]


@attrs.define
class Peer:
    host: Any
    mux: UDPMultiplexer
    puncher: HolePuncher
    candidates: list[Candidate]


def make_internet(seed: int = 0, loss: float = 0.0) -> sim.SimulatedInternet:
    internet = sim.SimulatedInternet(seed=seed, latency=0.005, loss=loss)
    internet.add_host(SERVER[0]).listenUDP(SERVER[1], BindingServer())
    return internet


def make_peer(internet: sim.SimulatedInternet, kind: str, index: int, nat: Any = None) -> Peer:
    spec = NATS[kind]
    if spec is None and nat is None:
        host = internet.add_host(f"203.0.113.{100 + index}")
    else:
        if nat is None:
            assert spec is not None
            nat = internet.add_nat(
                f"198.51.100.{index}",
                mapping=spec[0],
                filtering=spec[1],
                allocation=sim.PortAllocation.RANDOM
                if kind == "symmetric"
                else sim.PortAllocation.PRESERVING,
            )
        host = internet.add_host(f"192.0.2.{10 + index}", behind=nat)
    mux = UDPMultiplexer()
    host.listenUDP(PORT, mux)
    stun = STUNClient(reactor=host)
    mux.add_stun(stun, [Method.BINDING], [MessageClass.SUCCESS, MessageClass.ERROR])
    puncher = HolePuncher(reactor=host)
    puncher.attach(mux)
    found = internet.run_until(stun.discover([SERVER]))
    candidates = host_candidates(PORT, [host.addresses[0]])
    if found.mapped != (host.addresses[0], PORT):
        candidates.append(Candidate(CandidateType.SERVER_REFLEXIVE, *found.mapped))
    return Peer(host, mux, puncher, candidates)


def punch_both(
    internet: sim.SimulatedInternet, a: Peer, b: Peer, **kwargs: Any
) -> list[tuple[bool, Any]]:
    session, secret = os.urandom(16), os.urandom(32)
    da = a.puncher.punch_hole(
        PORT, b.candidates, session, secret=secret, controlling=True,
        local_candidates=a.candidates, **kwargs,
    )  # fmt: skip
    db = b.puncher.punch_hole(
        PORT, a.candidates, session, secret=secret, controlling=False,
        local_candidates=b.candidates, **kwargs,
    )  # fmt: skip
    both: Deferred[Any] = DeferredList([da, db], consumeErrors=True)
    return list(internet.run_until(both, timeout=60))


def public_address(peer: Peer) -> str:
    behind = peer.host.behind
    return str(behind.public_address if behind is not None else peer.host.addresses[0])


@pytest.mark.parametrize(("a", "b"), CONNECTABLE, ids=lambda k: str(k))
def test_connectable_pairs_connect(a: str, b: str) -> None:
    internet = make_internet()
    alice, bob = make_peer(internet, a, 1), make_peer(internet, b, 2)
    (ok_a, result_a), (ok_b, result_b) = punch_both(internet, alice, bob)
    assert ok_a and ok_b, (result_a, result_b)
    assert isinstance(result_a, PunchResult) and isinstance(result_b, PunchResult)
    # each side sends to where the other's datagrams really come from
    assert result_a.remote.address[0] == public_address(bob)
    assert result_b.remote.address[0] == public_address(alice)
    assert result_a.elapsed < 0.1 and result_b.elapsed < 0.1
    assert result_a.rtt is not None and result_a.rtt < 0.05


@pytest.mark.parametrize(("a", "b"), HARD, ids=lambda k: str(k))
def test_symmetric_against_port_restricted_fails_with_a_report(a: str, b: str) -> None:
    internet = make_internet()
    alice, bob = make_peer(internet, a, 1), make_peer(internet, b, 2)
    (ok_a, failure_a), (ok_b, failure_b) = punch_both(internet, alice, bob, timeout=2.0)
    assert not ok_a and not ok_b
    error = failure_a.value
    assert isinstance(error, PunchFailed)
    assert "hole punching failed after 2.0s" in str(error)
    assert {p.remote.kind for p in error.pairs} >= {CandidateType.SERVER_REFLEXIVE}
    assert all(p.punches_sent <= 30 for p in error.pairs)
    internet.advance(1.0)  # let datagrams still in flight land
    assert internet.clock.getDelayedCalls() == [], "every timer was cancelled"


@pytest.mark.parametrize(("a", "b"), CONNECTABLE[::3], ids=lambda k: str(k))
def test_connects_through_ten_percent_loss(a: str, b: str) -> None:
    for seed in range(5):
        internet = make_internet(seed=seed, loss=0.10)
        alice, bob = make_peer(internet, a, 1), make_peer(internet, b, 2)
        (ok_a, result_a), (ok_b, result_b) = punch_both(internet, alice, bob)
        assert ok_a and ok_b, (seed, result_a, result_b)


def test_peers_behind_the_same_nat_use_host_candidates() -> None:
    internet = make_internet()
    nat = internet.add_nat_of_type("198.51.100.1", "port-restricted-cone")
    alice = make_peer(internet, "port-restricted", 1, nat=nat)
    bob = make_peer(internet, "port-restricted", 2, nat=nat)
    (ok_a, result_a), (ok_b, result_b) = punch_both(internet, alice, bob)
    assert ok_a and ok_b
    assert result_a.remote.kind is CandidateType.HOST
    assert result_a.remote.address == (bob.host.addresses[0], PORT)
    assert result_a.local_kind is CandidateType.HOST


def test_attacker_without_the_key_is_ignored() -> None:
    """Knowing the session id and both public endpoints is not enough."""
    internet = make_internet()
    alice, bob = make_peer(internet, "full", 1), make_peer(internet, "full", 2)
    attacker_host = internet.add_host("203.0.113.66")
    sink = sim_sink(attacker_host)
    session, secret = os.urandom(16), os.urandom(32)
    wrong = SessionKeys.derive(session, os.urandom(32), offerer=True)
    d = bob.puncher.punch_hole(
        PORT, alice.candidates, session, secret=secret, controlling=False,
        local_candidates=bob.candidates, timeout=1.0,
    )  # fmt: skip
    for target in bob.candidates:
        for _ in range(5):
            _, forged = punch(wrong, target.address)
            sink.transport.write(forged, target.address)
    outcome: Any = internet.run_until(DeferredList([d], consumeErrors=True))
    [(ok, failure)] = outcome
    assert not ok and isinstance(failure.value, PunchFailed)
    assert bob.puncher.stats.dropped_bad_mac >= 5
    assert sink.received == [], "no ACK went to the attacker"


def test_a_punch_reflected_to_its_sender_is_dropped() -> None:
    """
    An attacker who echoes alice's own PUNCH back at her, from where bob
    would be, does not get it taken for bob's: her control key is not his.
    """
    internet = make_internet()
    alice = make_peer(internet, "none", 1)
    session, secret = os.urandom(16), os.urandom(32)
    bob = ("203.0.113.102", PORT)
    alice.puncher.punch_hole(
        PORT, [Candidate(CandidateType.HOST, *bob)], session, secret=secret,
        controlling=True, timeout=1.0,
    ).addErrback(lambda failure: None)  # fmt: skip
    alices = SessionKeys.derive(session, secret, offerer=True)
    _, reflected = punch(alices, ("203.0.113.101", PORT))
    alice.puncher.datagramReceived(reflected, bob)
    assert alice.puncher.stats.dropped_bad_mac == 1
    bobs = SessionKeys.derive(session, secret, offerer=False)
    alice.puncher.datagramReceived(punch(bobs, ("203.0.113.101", PORT))[1], bob)
    assert alice.puncher.stats.dropped_bad_mac == 1, "bob's own PUNCH is taken"
    internet.advance(2.0)


def sim_sink(host: Any) -> Any:
    from tests.fakes import Collector

    sink = Collector()
    host.listenUDP(6666, sink)
    return sink


def test_wrong_local_port_is_refused() -> None:
    internet = make_internet()
    alice = make_peer(internet, "none", 1)
    with pytest.raises(ConfigurationError):
        alice.puncher.punch_hole(
            PORT + 1, [], os.urandom(16), secret=os.urandom(32), controlling=True
        )


def test_garbage_and_unknown_sessions_are_counted() -> None:
    internet = make_internet()
    alice = make_peer(internet, "none", 1)
    keys = SessionKeys.derive(os.urandom(16), os.urandom(32), offerer=True)
    _, stray = punch(keys, ("203.0.113.101", PORT))
    alice.puncher.datagramReceived(stray, ("203.0.113.9", 1))
    alice.puncher.datagramReceived(
        b"\x00\x01\x00\x00" + b"\x21\x12\xa4\x42" + bytes(12), ("203.0.113.9", 1)
    )
    assert alice.puncher.stats.dropped_unknown_session == 1
    assert alice.puncher.stats.dropped_malformed == 1


class _FirstArrivals(DatagramProtocol):
    """When the first datagram reached each port of a host."""

    def __init__(self, host: Any, arrivals: dict[int, float], port: int) -> None:
        self.host, self.arrivals, self.port = host, arrivals, port

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.arrivals.setdefault(self.port, self.host.seconds())


def test_the_puncher_paces_new_addresses_between_rounds() -> None:
    """
    Thirty-two candidates, a burst of 4 and then one per 10 ms: the last
    is reached 280 ms in, between rounds, not at the round after.
    """
    internet = make_internet()
    alice = make_peer(internet, "none", 1)
    target = internet.add_host("203.0.113.200")
    arrivals: dict[int, float] = {}
    for port in range(40000, 40032):
        target.listenUDP(port, _FirstArrivals(target, arrivals, port))
    remote = [
        Candidate(CandidateType.SERVER_REFLEXIVE, "203.0.113.200", port, priority=50000 - port)
        for port in range(40000, 40032)
    ]
    start = alice.host.seconds()
    alice.puncher.punch_hole(
        PORT, remote, os.urandom(16), secret=os.urandom(32), controlling=True,
        settings=PunchSettings(timeout=1.0, pace=0.01, pace_burst=4),
    ).addErrback(lambda f: f.trap(PunchFailed))  # fmt: skip
    internet.advance(1.5)
    latency = 0.005
    sent = sorted((when - start - latency, port) for port, when in arrivals.items())
    assert [port for _, port in sent] == list(range(40000, 40032))
    for count, (when, _) in enumerate(sent, start=1):
        assert count <= 4 + when / 0.01 + 1e-6
    assert sent[-1][0] == pytest.approx(0.28, abs=0.005)
