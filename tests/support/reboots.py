"""
A NAT reboot in the lab while data flows: both NATs of a pair forget their
conntrack entries, and the pair's traffic has to find its way again.  What
the failure-detection lab test and its benchmark (C{benchmarks.bench_failure})
run, trial by trial.

A trial: an offerer connects and streams a numbered datagram every C{EVERY}
seconds to the answerer, which sends nothing but keep-alives (greetings
one way, as an application that reports to a peer sends them); once data
arrives, both NATs' conntrack is flushed, and the trial waits for the
first datagram sent after the flush to arrive.  When both sides send data
a Linux NAT that preserves ports heals by itself (each side's next
datagram opens its own NAT, and the peer's finds the mapping in place); a
one-way flow waits for the receiver's next keep-alive, up to an interval,
unless the sender notices and punches again.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from itertools import count

import attrs

from tests.support.lab_fixtures import Peers
from tests.support.natlab import Nat
from tests.support.peer_runner import PeerProcess

EVERY = 0.1
"""Seconds between the offerer's datagrams."""

STREAM_FOR = 600.0
"""How long the offerer's stream lasts: longer than any trial."""

_serial = count(1)


@attrs.frozen
class Recovery:
    """
    One trial's outcome.

    @ivar seconds: from the flush to the arrival of the first datagram
        sent after it that arrived; C{None} if none came within the
        trial's time.
    @ivar states: the offerer's connection states announced in between.
    @ivar repunched: whether the offerer punched again in between.
    @ivar lost: whether either side declared the path lost.
    """

    seconds: float | None
    states: tuple[str, ...]
    repunched: bool
    lost: bool


def flowing_pair(
    peers: Peers, offerer: tuple[str, int], answerer: tuple[str, int], *options: str
) -> tuple[PeerProcess, PeerProcess]:
    """
    An answerer and an offerer streaming to it, data arriving; both take
    C{options}.  Returns the offerer and the answerer.
    """
    serial = next(_serial)
    a_name, b_name = f"fa{serial}", f"fb{serial}"
    common = ("--no-detect", *options)
    bob = peers.start(answerer[0], b_name, *common, index=answerer[1])
    alice = peers.start(offerer[0], a_name, *common, "--connect", b_name, index=offerer[1])
    alice.wait_for("connected", timeout=30)
    alice.command(f"stream {b_name} {EVERY} {STREAM_FOR}")
    bob.wait_for("data", 5, timeout=10)
    return alice, bob


def reboot(alice: PeerProcess, bob: PeerProcess, nats: Sequence[Nat], timeout: float) -> Recovery:
    """
    Flush C{nats}' conntrack while C{alice} streams to C{bob}; wait up to
    C{timeout}.

    @raise AssertionError: no data flows before the flush.
    """
    started = time.time()
    bob.wait_for("data", 1, timeout=10, where=lambda e: e["time"] > started)
    for nat in nats:
        nat.flush_conntrack()
    # From when both NATs have forgotten: a datagram sent while a flush was
    # still under way may have passed on the old mapping.
    flushed = time.time()
    after = alice.wait_for("sent", 1, timeout=5, where=lambda e: e["time"] > flushed)[0]["count"]
    try:
        arrived = bob.wait_for("data", 1, timeout=timeout, where=lambda e: e["seq"] >= after)[0]
    except AssertionError:
        until, seconds = time.time(), None
    else:
        until, seconds = arrived["time"], arrived["time"] - flushed
    between = [e for e in alice.snapshot() if flushed < e["time"] <= until]
    return Recovery(
        seconds=seconds,
        states=tuple(e["state"] for e in between if e["event"] == "state"),
        repunched=any(e["event"] == "connected" and e["repunch"] for e in between),
        lost=any(e["event"] == "lost" for e in between),
    )
