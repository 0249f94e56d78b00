"""
What one kept-alive connection costs in memory, held to a bound.

A node with thousands of peers keeps, for each, a L{PeerConnection}, a
keep-alive machine with its timer and the punch session that answers late
PUNCHes; C{benchmarks/bench_scale.py} measures 10,000 such sessions on
loopback against a target of 4 KiB per connection.  This test builds a few
hundred on the simulated internet, in a second, and fails when the memory
per connection end grows past the bound below, so that a regression (a
closure per connection, bookkeeping kept after punching, a reactor timer
per machine) shows in CI rather than in the next benchmark run.
"""

from __future__ import annotations

import gc
import os
import tracemalloc
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger, LogPublisher
from twisted.python.failure import Failure

from twisted_nat import testing as sim
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.connection import AppDataRouter, PeerConnection
from twisted_nat.control import SessionKeys
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.punch import HolePuncher, PunchResult

SESSIONS = 500
SIDE = 23  # ports per host: 23 x 23 pairs, one session each, at least SESSIONS
WARM_UP = 4
BATCH = 25

BYTES_PER_END_BOUND = 3500
"""
Measured on CPython 3.11: 3,196 bytes per connection end (6,392 per
session, both ends being in this process).  About 1,170 are the keep-alive
machine with its estimators, callbacks, entry and timer; 340 the Deferred
that L{HolePuncher.maintain_binding} returns, with the errback its owner
adds; 620 the punch session kept for late PUNCHes, with its result; 500
the connection with its keys (four of 32 bytes: control and data, each
direction), replay window and router entry; 170 the peer's address, as
tuples; 390 this test's own lists and callbacks.  The bound leaves about
300 bytes (9 %) for other Python versions, which is less than each of the
regressions it is there to catch costs.  A connection that carries data
also holds two ChaCha20-Poly1305 contexts, in OpenSSL's memory, which
C{tracemalloc} does not see.
"""


@attrs.define(eq=False)
class Port:
    """One socket of a simulated host with the protocols every peer has on it."""

    puncher: HolePuncher
    router: AppDataRouter
    number: int
    candidates: list[Candidate]


def open_port(host: Any, number: int) -> Port:
    mux = UDPMultiplexer()
    host.listenUDP(number, mux)
    puncher = HolePuncher(reactor=host)
    puncher.attach(mux)
    router = AppDataRouter()
    router.attach(mux)
    address = host.addresses[0]
    return Port(puncher, router, number, [Candidate(CandidateType.HOST, address, number)])


def connect(a: Port, b: Port, ends: list[PeerConnection], lost: list[Failure]) -> Deferred[Any]:
    """
    Punch one session between C{a} and C{b} and, as the service does with
    a punch result, make each end's connection and keep it alive.
    """
    session_id, secret = os.urandom(16), os.urandom(32)

    def end(me: Port, other: Port, controlling: bool) -> Deferred[None]:
        def connected(result: PunchResult) -> None:
            keys = SessionKeys.derive(session_id, secret, offerer=controlling)
            connection = PeerConnection(
                me.router, keys, result.remote, result.local_kind, result.rtt, result.elapsed
            )
            ends.append(connection)
            keeping = me.puncher.maintain_binding(connection, connection.remote_address)
            keeping.addErrback(lost.append)

        punching = me.puncher.punch_hole(
            me.number,
            other.candidates,
            session_id,
            secret=secret,
            controlling=controlling,
            local_candidates=me.candidates,
        )
        return punching.addCallback(connected)

    return DeferredList([end(a, b, True), end(b, a, False)], fireOnOneErrback=True)


def connect_all(
    internet: sim.SimulatedInternet,
    pairs: list[tuple[Port, Port]],
    lost: list[Failure],
) -> list[PeerConnection]:
    """Punch a session for each pair, then have every end probe once, as in steady state."""
    ends: list[PeerConnection] = []
    # In batches: the simulation's Clock sorts all its pending calls (a punch
    # timer per end, a call per datagram in flight) at every insertion.
    for start in range(0, len(pairs), BATCH):
        batch = pairs[start : start + BATCH]
        internet.run_until(DeferredList([connect(a, b, ends, lost) for a, b in batch]))
    for connection in ends:
        assert connection.keepalive is not None
        connection.keepalive.restart(probe_now=True)
    internet.advance(1.0)
    return ends


@pytest.fixture
def unlogged(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Events go nowhere: until logging begins, Twisted buffers every event
    (up to 65,536, a punch's "punched through" among them), which is no
    connection's memory.
    """
    for cls in (HolePuncher, PeerConnection):
        monkeypatch.setattr(cls, "log", Logger(observer=LogPublisher()))


def test_memory_per_connection_end(unlogged: None) -> None:
    internet = sim.SimulatedInternet(seed=3, latency=0.005)
    alice, bob = internet.add_host("203.0.113.1"), internet.add_host("203.0.113.2")
    side_a = [open_port(alice, 5000 + i) for i in range(SIDE)]
    side_b = [open_port(bob, 5000 + i) for i in range(SIDE)]
    # Every port of alice's has one session with every port of bob's: the
    # router finds a connection by its peer's address, one per socket pair.
    pairs = [(a, b) for a in side_a for b in side_b][: WARM_UP + SESSIONS]
    lost: list[Failure] = []
    # First-use allocations (caches, interned strings) are not a connection's.
    connect_all(internet, pairs[:WARM_UP], lost)

    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.take_snapshot()
        ends = connect_all(internet, pairs[WARM_UP:], lost)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()

    assert len(ends) == 2 * SESSIONS
    assert lost == []
    quality = ends[0].quality()
    assert quality is not None and quality.rtt is not None, "the first probes were answered"
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    grown = sum(
        stat.size_diff
        for stat in after.filter_traces(ignore).compare_to(before.filter_traces(ignore), "filename")
    )
    per_end = grown / len(ends)
    print(f"memory: {per_end:.0f} bytes per connection end, {2 * per_end:.0f} per session")
    assert per_end < BYTES_PER_END_BOUND
    # Cipher state lives in OpenSSL's memory, out of tracemalloc's sight:
    # a connection that carried no data must not hold any.
    assert not [v for end in ends for v in vars(end).values() if isinstance(v, ChaCha20Poly1305)]
    assert not any(end.router.ciphers.holds(end) for end in ends)
