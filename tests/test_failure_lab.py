"""
Failure detection on real Linux NATs: both port-restricted NATs of a pair
forget their conntrack entries (a reboot), while data flows every 100 ms
from one peer to the other (L{tests.support.reboots}) and while the
connection is idle.

What is held to be true (correctness, with generous bounds: the speed is
C{benchmarks.bench_failure}'s to measure):

  - between two port-restricted NATs (which keep their ports), data flows
    again (the receiver checks the path as the flow stops, which opens its
    NAT), and the sender's connection never announces itself healthy
    until it is;
  - behind a symmetric NAT (which hands out new ports) with a full cone,
    data flows again through a new punch through the rendezvous, and the
    sender's connection said so meanwhile: it announced C{checking} and
    C{reconnecting} before it was healthy again;
  - an idle connection works again in both directions one keep-alive
    interval plus the checks' time (and some slack) after the reboot;
  - between two symmetric NATs, where only a TURN relay (coturn, in a lab
    of its own) carries the connection, data flows again through the
    relay: the reboot moved both peers to new ports, which cost them
    their allocations, and both allocate again before the new punch.

C{FAILURE_LAB_TRIALS} sets the reboots with data flowing (2 by default).
"""

from __future__ import annotations

import os
import time

import pytest

from tests.support.lab_fixtures import LabWorld, Peers, lab_fixtures, lab_world
from tests.support.natlab import NatSpec, NatType
from tests.support.peer_runner import PeerProcess
from tests.support.reboots import flowing_pair, reboot

pytestmark = pytest.mark.lab

TRIALS = int(os.environ.get("FAILURE_LAB_TRIALS", "2"))

NATS = [
    NatSpec("portrestr1", NatType.PORT_RESTRICTED_CONE),
    NatSpec("portrestr2", NatType.PORT_RESTRICTED_CONE),
    NatSpec("symmetric", NatType.SYMMETRIC),
    NatSpec("full", NatType.FULL_CONE),
]

SAFETY = 20.0
"""A bound on recovery that only a broken implementation exceeds, even on a loaded machine."""

IDLE_INTERVAL = 5.0
"""The idle test's keep-alive interval, short so that the test is."""

world, peers = lab_fixtures(NATS)


def test_reboot_with_data_flowing(world: LabWorld, peers: Peers) -> None:
    lab = world.lab
    nats = [lab.nat("portrestr1"), lab.nat("portrestr2")]
    alice, bob = flowing_pair(peers, ("portrestr1", 0), ("portrestr2", 0))
    for trial in range(TRIALS):
        recovery = reboot(alice, bob, nats, SAFETY)
        print(f"\nports kept, trial {trial + 1}: {recovery}")
        assert recovery.seconds is not None, f"no data within {SAFETY:.0f} s: {recovery}"
        # Data may flow again on the old path before a new punch ends
        # (the receiver's check opened its NAT), but healthy comes last.
        assert "healthy" not in recovery.states[:-1], recovery
        assert_healthy_soon(alice)


def test_reboot_that_changes_ports_is_punched_again(world: LabWorld, peers: Peers) -> None:
    lab = world.lab
    nats = [lab.nat("symmetric"), lab.nat("full")]
    alice, bob = flowing_pair(peers, ("symmetric", 0), ("full", 0))
    for trial in range(TRIALS):
        recovery = reboot(alice, bob, nats, SAFETY)
        print(f"\nnew ports, trial {trial + 1}: {recovery}")
        assert recovery.seconds is not None, f"no data within {SAFETY:.0f} s: {recovery}"
        assert recovery.lost and recovery.repunched, recovery
        # Not healthy in between: the old path was in doubt, then lost,
        # and healthy again only on the new one.
        assert recovery.states == ("checking", "reconnecting", "healthy"), recovery
        assert_healthy_soon(alice)


def assert_healthy_soon(alice: PeerProcess) -> None:
    """The connection's status says healthy within SAFETY seconds."""
    deadline = time.monotonic() + SAFETY
    while True:
        [row] = alice.status()["connections"]
        if row["state"] == "healthy":
            return
        assert time.monotonic() < deadline, row
        time.sleep(0.2)


def test_idle_connection_is_repaired_within_an_interval(world: LabWorld, peers: Peers) -> None:
    lab = world.lab
    interval = ("--keepalive-interval", str(IDLE_INTERVAL))
    bob = peers.start("portrestr2", "idleb", "--no-detect", *interval)
    alice = peers.start("portrestr1", "idlea", "--no-detect", *interval, "--connect", "idleb")
    alice.wait_for("connected", timeout=30)
    bob.wait_for("connected", timeout=10)
    time.sleep(1.0)
    for nat in (lab.nat("portrestr1"), lab.nat("portrestr2")):
        nat.flush_conntrack()
    # The next keep-alives within an interval, a quiet second, two seconds
    # of checks, a punch if they went unanswered, and a second's slack.
    time.sleep(IDLE_INTERVAL + 1.0 + 2.0 + 1.0)
    # Sent once, never again: they arrive only if the path works now.
    alice.command("send idleb 3")
    bob.command("send idlea 3")
    assert [e["seq"] for e in bob.wait_for("data", 3, timeout=10)] == [1, 2, 3]
    assert [e["seq"] for e in alice.wait_for("data", 3, timeout=10)] == [1, 2, 3]
    print(f"\nidle: states {[e['state'] for e in alice.of('state')]}, lost {alice.of('lost')}")


def test_reboot_of_a_relayed_pair_is_carried_by_the_relay_again() -> None:
    specs = [NatSpec("random1", NatType.SYMMETRIC), NatSpec("random2", NatType.SYMMETRIC)]
    with lab_world(specs, turn=True) as relayed_world:
        peers = Peers(relayed_world)
        try:
            nats = [relayed_world.lab.nat(spec.name) for spec in specs]
            alice, bob = flowing_pair(peers, ("random1", 0), ("random2", 0))
            [row] = alice.status()["connections"]
            assert row["relayed"], row
            for trial in range(TRIALS):
                recovery = reboot(alice, bob, nats, SAFETY)
                print(f"\nrelayed, trial {trial + 1}: {recovery}")
                assert recovery.seconds is not None, f"no data within {SAFETY:.0f} s: {recovery}"
                assert recovery.lost and recovery.repunched, recovery
                assert_healthy_soon(alice)
                [row] = alice.status()["connections"]
                assert row["relayed"], row
        finally:
            peers.stop_all()
