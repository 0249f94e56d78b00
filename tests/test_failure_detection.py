"""
Failure detection in seconds, on the simulated internet: both NATs of a
pair forget their bindings (a reboot) while data flows or while the
connection is idle; liveness checks find it, the status says so, and a new
punch repairs it, where keep-alive alone takes a whole interval and more.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.world import World, build_world, record_writes
from twisted_nat import control
from twisted_nat import testing as sim
from twisted_nat.connection import PeerConnection
from twisted_nat.keepalive import CheckSettings
from twisted_nat.stun.message import MessageClass

RANDOM = sim.PortAllocation.RANDOM
PAIR = {"alice": ("port-restricted-cone", RANDOM), "bob": ("port-restricted-cone", RANDOM)}
OFF = CheckSettings(enabled=False)
ON = CheckSettings()


def world(checks: CheckSettings = ON, **options: Any) -> World:
    return build_world(
        PAIR,
        World,
        nat={"binding_timeout": 30.0},
        keepalive_interval=25.0,
        keepalive_timeout=5.0,
        keepalive_checks=checks,
        **options,
    )


def connect(w: World) -> PeerConnection:
    """alice connects to bob, and both have the connection."""
    alice: PeerConnection = w.internet.run_until(w.services["alice"].connect("bob"))
    w.internet.advance(0.5)
    return alice


class Flow:
    """Both sides send every 100 ms; when a datagram sent after a moment arrives."""

    def __init__(self, w: World, alice: PeerConnection) -> None:
        self.w = w
        self.alice = alice
        self.bob = w.services["bob"].connections["alice"]
        self.sent = 0

    def step(self) -> None:
        self.sent += 1
        for connection in (self.alice, self.bob):
            connection.write(b"%d" % self.sent)
        self.w.internet.advance(0.1)

    def delivered_since(self, first: int) -> bool:
        """Whether a datagram numbered C{first} or later reached each side."""
        return all(
            any(int(data) >= first for data, _ in self.w.apps[name][0].received)
            for name in ("alice", "bob")
        )


def reboot_while_flowing(
    checks: CheckSettings, seconds: float
) -> tuple[float | None, list[str], list[str]]:
    """
    Flush both NATs while data flows: seconds until data flows both ways
    again (None if not within C{seconds}), alice's state in her status
    at every step, and every state her connection announced.
    """
    w = world(checks)
    alice = connect(w)
    flow = Flow(w, alice)
    for _ in range(20):
        flow.step()
    first = flow.sent + 1
    announced: list[str] = []
    alice.on_state_change(lambda c: announced.append(c.state))
    for nat in w.nats.values():
        nat.flush()
    session = alice.session_id
    states = []
    for step in range(int(seconds * 10)):
        flow.step()
        state = w.services["alice"].status()["connections"][0]["state"]
        # A new path is healthy; the old one is not, once anyone knows.
        states.append(state if alice.session_id == session else f"{state} again")
        if flow.delivered_since(first):
            return (step + 1) / 10, states, announced
    return None, states, announced


def test_reboot_with_traffic_flowing_is_repaired_in_seconds() -> None:
    recovered, states, announced = reboot_while_flowing(ON, 15.0)
    assert recovered is not None and recovered < 8.0
    # The old path is healthy only until the checks had something to say.
    doubt = states.index("checking")
    assert "healthy" not in states[doubt:]
    assert states[-1] == "healthy again"
    assert announced == ["checking", "reconnecting", "healthy"]


def test_keepalive_alone_is_blind_for_an_interval() -> None:
    """What the checks are for: without them the status says healthy for 25 s."""
    recovered, states, announced = reboot_while_flowing(OFF, 15.0)
    assert recovered is None
    assert set(states) == {"healthy"}
    assert announced == []


def test_application_hears_of_each_state() -> None:
    w = world()
    alice = connect(w)
    states: list[str] = []
    paths: list[bytes] = []
    alice.on_state_change(lambda c: states.append(c.state))
    alice.on_path_change(lambda c: paths.append(c.session_id))
    flow = Flow(w, alice)
    for nat in w.nats.values():
        nat.flush()
    for _ in range(100):
        flow.step()
    assert states == ["checking", "reconnecting", "healthy"]
    assert paths == [alice.session_id]
    quality = alice.quality()
    assert quality is not None
    row = w.services["alice"].status()["connections"][0]
    assert row["state"] == "healthy"


def test_loss_counts_the_unanswered_checks() -> None:
    """While the path is in doubt, its loss says so: the checks go unanswered."""
    w = world()
    alice = connect(w)
    flow = Flow(w, alice)
    for nat in w.nats.values():
        nat.flush()
    losses = []
    for _ in range(40):
        flow.step()
        losses.append(w.services["alice"].status()["connections"][0]["loss"])
    assert max(loss for loss in losses if loss is not None) > 0.5


@pytest.mark.parametrize("checks", [ON, OFF], ids=["checks", "keep-alive only"])
def test_idle_connection_is_repaired_within_an_interval_and_the_checks(
    checks: CheckSettings,
) -> None:
    w = world(checks)
    alice = connect(w)
    first = alice.session_id
    w.internet.advance(3.0)
    for nat in w.nats.values():
        nat.flush()
    # The next keep-alive, 25 s after the last one, goes unanswered; then the
    # checks' second of quiet and two seconds of checks, and a punch.
    w.internet.advance(25.0 + 1.0 + 2.0 + 2.0)
    repaired = alice.session_id != first and not alice.reconnecting
    assert repaired is checks.enabled
    if repaired:
        alice.write(b"after the reboot")
        w.internet.advance(0.1)
        assert w.apps["bob"][0].received[-1][0] == b"after the reboot"


def test_one_way_flow_with_a_live_peer_stays_healthy() -> None:
    """A peer that sends nothing back but answers checks: one silent check a quiet spell."""
    w = world()
    alice = connect(w)
    states: list[str] = []
    alice.on_state_change(lambda c: states.append(c.state))
    keeper = w.services["bob"].puncher.keeper
    before = keeper.stats.received
    for n in range(100):  # 10 s
        alice.write(b"%d" % n)
        w.internet.advance(0.1)
    assert states == []
    assert len(w.apps["bob"][0].received) == 100
    checks = keeper.stats.received - before
    assert 1 <= checks <= 10  # about one a second of quiet, not one every 250 ms


def test_a_replayed_ack_does_not_hide_a_lost_path() -> None:
    """Only answers to fresh checks count: bob's old ACKs sent again change nothing."""
    w = world()
    alice = connect(w)
    written = record_writes(w.services["bob"], w.internet)
    for n in range(30):  # a one-way flow: a check a quiet spell, answered
        alice.write(b"%d" % n)
        w.internet.advance(0.1)
    acks = [data for _, data, _ in written if _is_ack(data)]
    assert acks
    keeper = w.services["alice"].puncher.keeper
    flow = Flow(w, alice)
    for nat in w.nats.values():
        nat.flush()
    states: list[str] = []
    alice.on_state_change(lambda c: states.append(c.state))
    received = keeper.stats.received
    for _ in range(80):
        flow.step()
        for ack in acks:
            keeper.received(ack, alice.remote_address, alice.base)
    assert keeper.stats.received - received >= 80 * len(acks)
    assert states == ["checking", "reconnecting", "healthy"]


def _is_ack(datagram: bytes) -> bool:
    fields = control.keepalive_fields(datagram)
    return fields is not None and fields[1] is MessageClass.SUCCESS


def test_both_sides_wake_their_rendezvous_connection_after_a_loss() -> None:
    """
    A NAT that lost its bindings silenced our connection to the rendezvous
    too, until we send on it: the side that waits for a new offer must.
    """
    w = world()
    alice = connect(w)
    looked_up: dict[str, list[str]] = {"alice": [], "bob": []}
    for name, service in w.services.items():
        signaling: Any = service.signaling
        lookup = signaling.lookup

        def spy(peer: str, name: str = name, lookup: Any = lookup) -> Any:
            looked_up[name].append(peer)
            return lookup(peer)

        signaling.lookup = spy
    flow = Flow(w, alice)
    for nat in w.nats.values():
        nat.flush()
    for _ in range(60):
        flow.step()
    assert looked_up == {"alice": ["alice"], "bob": ["bob"]}
    assert alice.state == "healthy"
