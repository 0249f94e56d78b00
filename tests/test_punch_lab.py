"""
Hole punching, keep-alive and the peer connection's authentication on real
Linux NATs: the whole service, as an application runs it, in the NAT lab.

Each peer is a L{tests.support.peer_runner} process in a peer namespace,
talking to our STUN server and our rendezvous server in the lab's internet
namespace; the test reads the JSON events the peers print and drives them
through their stdin.  The simulated internet of the unit tests confirms
what its authors believed about NATs; here the kernel's conntrack and
nftables decide.

What is held to be true:

  - every pair of cone NATs (and no NAT), and a symmetric NAT with no NAT,
    a full cone or a restricted cone, connects directly, at 0 % and at 10 %
    loss, in either role;
  - two symmetric NATs cannot be punched without a relay, and fail with
    the punch's report (a symmetric NAT with a port-restricted cone is the
    birthday method's, in tests/test_relay_lab.py);
  - peers behind one NAT reach each other on their host candidates;
  - keep-alive holds a connection open across idle times longer than the
    NATs' UDP timeout, which without it ends the connection, and brings it
    back after a NAT forgets its mappings;
  - an attacker on the internet who knows both public endpoints and the
    session id, but not the session key, gets nothing into either peer.

C{PUNCH_LAB_TRIALS} sets the connections per pair (2 by default, which keeps
this module at about two minutes, most of it the keep-alive test's minute).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time
from collections.abc import Sequence
from itertools import count
from typing import Any

import pytest

from tests.support.lab_fixtures import LabWorld, Peers, lab_fixtures, loss_on
from tests.support.natlab import DEFAULT_UDP_TIMEOUT, Nat, NatSpec, NatType
from tests.support.peer_runner import PeerProcess

pytestmark = pytest.mark.lab

TRIALS = int(os.environ.get("PUNCH_LAB_TRIALS", "2"))

NATS = [
    NatSpec("none", NatType.NONE, peers=2),
    NatSpec("full", NatType.FULL_CONE, peers=2),
    NatSpec("restricted", NatType.RESTRICTED_CONE, peers=2),
    NatSpec("portrestr", NatType.PORT_RESTRICTED_CONE, peers=2),
    NatSpec("symmetric", NatType.SYMMETRIC, peers=2),
    # Two peers behind one symmetric NAT meet on their LAN; a symmetric
    # pair that has to cross two NATs needs a second one.
    NatSpec("symmetric2", NatType.SYMMETRIC),
]

CONES = ["none", "full", "restricted", "portrestr"]

DIRECT = [
    *[(a, b) for i, a in enumerate(CONES) for b in CONES[i + 1 :]],
    *[(cone, "symmetric") for cone in CONES[:3]],
    *[("symmetric", cone) for cone in CONES[:3]],
]
"""(offerer, answerer): what must connect directly.  Symmetric pairs go both
ways round, because the symmetric side's role decides who learns whose
peer-reflexive address first."""

WITHOUT_TURN = [("symmetric", "symmetric2"), ("symmetric2", "symmetric")]

_serial = count(1)

world, peers = lab_fixtures(NATS)


def start_pair(
    peers: Peers,
    offerer: tuple[str, int],
    answerer: tuple[str, int],
    *options: str,
    instances: int = 1,
    connect: bool = True,
    offerer_options: Sequence[str] = (),
) -> tuple[PeerProcess, PeerProcess, str]:
    """
    An answerer and an offerer, started together; the offerer connects by
    itself (C{--connect}, waiting for the answerer to register) unless
    C{connect} is false.  Returns both and the answerer's base name.
    """
    serial = next(_serial)
    a_name, b_name = f"a{serial}", f"b{serial}"
    common = ("--no-detect", *options)
    bob = peers.start(answerer[0], b_name, *common, index=answerer[1], instances=instances)
    extra = ["--connect", b_name] if connect else []
    alice = peers.start(
        offerer[0],
        a_name,
        *common,
        *extra,
        *offerer_options,
        index=offerer[1],
        instances=instances,
    )
    return alice, bob, b_name


def public_host(nat: Nat, index: int = 0) -> str:
    """Where a peer of C{nat} appears from outside."""
    return nat.peers[index].address if nat.type is NatType.NONE else nat.public_address


def summary(events: list[dict[str, Any]]) -> str:
    setups = ", ".join(f"{e['setup_ms']:.0f}" for e in events)
    kinds = sorted({f"{e['path']['local']}->{e['path']['remote']}" for e in events})
    return f"set-up {setups} ms, paths {', '.join(kinds)}"


# --- direct connections --------------------------------------------------------------


@pytest.mark.parametrize("loss", [0, 10], ids=lambda p: f"{p}%loss")
@pytest.mark.parametrize("offerer,answerer", DIRECT, ids=[f"{a}-{b}" for a, b in DIRECT])
def test_connects_directly(
    world: LabWorld, peers: Peers, offerer: str, answerer: str, loss: int
) -> None:
    """
    Every trial connects, on a path straight to the other NAT's public
    address (or the other peer's own, without NAT): never relayed.  Which
    candidate types made the path is printed with the set-up times.
    """
    lab = world.lab
    with loss_on([lab.nat(offerer), lab.nat(answerer)], loss):
        alice, bob, _ = start_pair(peers, (offerer, 0), (answerer, 0), instances=TRIALS)
        done = alice.wait_for("done", timeout=30 + TRIALS * 12)[0]
        answered = bob.wait_for("connected", TRIALS, timeout=15)
    assert alice.of("failed") == [] and done["failed"] == 0
    connected = alice.of("connected")
    assert len(connected) == TRIALS
    for offered, answer in zip(
        connected, sorted(answered, key=lambda e: e["instance"]), strict=True
    ):
        for event, far in ((offered, answerer), (answer, offerer)):
            path = event["path"]
            assert path["remote"] != "relay", event
            assert path["remote_address"].rsplit(":", 1)[0] == public_host(lab.nat(far)), event
        assert offered["session_id"] == answer["session_id"]
    print(f"\n{offerer} -> {answerer} at {loss}% loss: {summary(connected)}")


@pytest.mark.parametrize(
    "offerer,answerer", WITHOUT_TURN, ids=[f"{a}-{b}" for a, b in WITHOUT_TURN]
)
def test_fails_cleanly_without_turn(peers: Peers, offerer: str, answerer: str) -> None:
    """
    Neither side can learn the port the symmetric NAT opens towards the
    other, so both give up at the punch timeout, with L{PunchFailed}
    naming every candidate pair and what it saw: PUNCHes sent, no ACK.
    Both trials run at once, since each only waits out its timeout.
    """
    alice, bob, b_name = start_pair(
        peers,
        (offerer, 0),
        (answerer, 0),
        "--punch-timeout",
        "3",
        instances=2,
        connect=False,
    )
    alice.wait_for("ready", 2, timeout=30)
    bob.wait_for("ready", 2, timeout=30)
    for instance in (1, 2):
        alice.command(f"@{instance} connect {b_name}-{instance}")
    failed = alice.wait_for("failed", 2, timeout=20)
    answered = bob.wait_for("failed", 2, timeout=10)
    for event in failed + answered:
        assert event["error_type"] == "PunchFailed", event
        assert event["error"].startswith("hole punching failed after "), event
        assert event["pairs"], event
        for pair in event["pairs"]:
            assert pair["punches_sent"] > 0 and pair["acks_received"] == 0, event
            assert pair["remote_address"] in event["error"]
    assert {e["role"] for e in failed} == {"offerer"}
    assert {e["role"] for e in answered} == {"answerer"}
    assert alice.of("connected") == [] and bob.of("connected") == []
    for peer in (alice, bob):
        assert peer.status(1)["connections"] == []
    print(f"\n{offerer} -> {answerer}: {failed[0]['error']}")


@pytest.mark.parametrize("nat", [spec.name for spec in NATS if spec.peers == 2])
def test_same_nat_peers_use_host_candidates(world: LabWorld, peers: Peers, nat: str) -> None:
    """Two peers behind one NAT (which does not hairpin) meet on their LAN."""
    alice, bob, _ = start_pair(peers, (nat, 0), (nat, 1), instances=TRIALS)
    done = alice.wait_for("done", timeout=30 + TRIALS * 12)[0]
    assert done["failed"] == 0, alice.of("failed")
    connected = alice.of("connected")
    for event in connected:
        assert event["path"]["local"] == "host" and event["path"]["remote"] == "host", event
        assert (
            event["path"]["remote_address"].rsplit(":", 1)[0] == world.lab.nat(nat).peers[1].address
        )
    print(f"\n{nat} p0 -> p1: {summary(connected)}")


# --- an attacker who knows the session id but not its key -------------------------------


ATTACK_COUNT = 8
"""Forgeries of each kind, per sender address, per target."""


def test_attacker_without_the_key_gets_nothing_in(world: LabWorld, peers: Peers) -> None:
    """
    From the internet, an attacker sends both peers forged control messages
    (PUNCH, PUNCH_ACK, PUNCH_CONFIRM, KEEP_ALIVE and its ACK, all well
    formed and naming the real session, under a wrong key) and data frames
    with wrong tags, from its own address and spoofed from the other peer's
    public endpoint, which is the one address the peer's connection listens
    to.  Nothing reaches either application, the attacker gets no answer,
    every forgery is counted as dropped for the right reason, and the real
    connection carries data as before.

    One peer has no NAT and the other sits behind a full cone, so that even
    the forgeries from the attacker's own address reach them: the filtering
    of a stricter NAT would make this test pass for the NAT's sake.
    """
    lab = world.lab
    alice, bob, b_name = start_pair(peers, ("full", 1), ("none", 1), "--echo")
    offered = alice.wait_for("connected", timeout=30)[0]
    answered = bob.wait_for("connected", timeout=10)[0]
    alice.command(f"send {b_name} 3")
    alice.wait_for("data", 3, timeout=10, kind="echo")
    before = {"alice": alice.status(), "bob": bob.status()}

    session = offered["session_id"]
    alice_public = answered["path"]["remote_address"]
    bob_public = offered["path"]["remote_address"]
    plan = {
        "session": session,
        "count": ATTACK_COUNT,
        "bind": lab.internet.addresses[3],
        "targets": [
            {"to": alice_public, "spoof": bob_public},
            {"to": bob_public, "spoof": alice_public},
        ],
    }
    script = "import sys; from tests.test_punch_lab import attack; sys.exit(attack(sys.argv[1]))"
    result = lab.run(
        lab.internet.namespace, [sys.executable, "-c", script, json.dumps(plan)], timeout=30
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["answers"] == [], report

    after = {"alice": alice.status(), "bob": bob.status()}
    sent = report["sent_per_target"]
    for who, peer_name in (("alice", b_name), ("bob", offered["name"])):
        old, new = before[who], after[who]
        assert new["received"] == old["received"], who
        [connection] = new["connections"]
        assert connection["peer"] == peer_name
        assert connection["path"] == old["connections"][0]["path"]
        assert new["sessions"] == old["sessions"]
        puncher = _delta(old["stats"]["puncher"], new["stats"]["puncher"])
        keeper = _delta(old["stats"]["keeper"], new["stats"]["keeper"])
        router = _delta(old["stats"]["router"], new["stats"]["router"])
        # PUNCHes and their answers reach the puncher, KEEP_ALIVEs and theirs the keeper.
        control = (puncher, keeper)
        assert sum(c["dropped_bad_mac"] for c in control) == sent["control"], (who, control)
        unknown = sum(c["dropped_unknown_session"] for c in control)
        assert unknown == sent["unknown_session"], (who, control)
        assert keeper["dropped_bad_mac"] > 0 and puncher["dropped_bad_mac"] > 0, (who, control)
        assert router["dropped_bad_tag"] == sent["data_spoofed"], (who, router)
        assert router["dropped_unknown_peer"] == sent["data_own"], (who, router)
        assert router["delivered"] == 0, (who, router)
    assert len(alice.of("connected")) == 1 and len(bob.of("connected")) == 1

    alice.command(f"send {b_name} 3")
    alice.wait_for("data", 6, timeout=10, kind="echo")
    print(f"\nattacker's forgeries per peer: {sent}; all dropped")


def _delta(old: dict[str, int], new: dict[str, int]) -> dict[str, int]:
    return {key: new[key] - old.get(key, 0) for key in new}


def attack(plan_json: str) -> int:
    """
    The attacker, run in the internet namespace (C{python -c}): forge
    everything, spoofed through a raw socket and from our own UDP socket;
    then listen a moment for anything coming back.  Prints what it sent per
    target and what it heard.
    """
    from twisted_nat import control
    from twisted_nat.address import parse_hostport
    from twisted_nat.control import SessionKeys

    plan = json.loads(plan_json)
    session = bytes.fromhex(plan["session"])
    wrong = SessionKeys.derive(session, os.urandom(32), offerer=True)
    stranger = SessionKeys.derive(os.urandom(16), os.urandom(32), offerer=True)
    own = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    own.bind((plan["bind"], 0))
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    tally = {"control": 0, "unknown_session": 0, "data_spoofed": 0, "data_own": 0}
    for target in plan["targets"]:
        to = parse_hostport(target["to"], 0)
        spoof = parse_hostport(target["spoof"], 0)
        forged = []
        for _ in range(plan["count"]):
            tid, punch = control.punch(wrong, to)
            forged += [
                ("control", punch),
                ("control", control.punch_ack(wrong, tid, spoof)),
                ("control", control.punch_confirm(wrong)),
                ("control", control.keepalive(wrong)[1]),
                ("control", control.keepalive_ack(wrong, tid)),
                ("unknown_session", control.punch(stranger, to)[1]),
            ]
        frames = [
            control.encrypt_frame(wrong.send_cipher(), sequence, b"forged application data")
            for sequence in range(1, plan["count"] + 1)
        ]
        for kind, message in forged:
            own.sendto(message, to)
            raw.sendto(_udp_packet(spoof, to, message), (to[0], 0))
            tally[kind] += 2
        for frame in frames:
            own.sendto(frame, to)
            raw.sendto(_udp_packet(spoof, to, frame), (to[0], 0))
            tally["data_own"] += 1
            tally["data_spoofed"] += 1
        time.sleep(0.01)
    answers = []
    own.settimeout(1.0)
    while True:
        try:
            data, source = own.recvfrom(4096)
        except TimeoutError:
            break
        answers.append({"from": f"{source[0]}:{source[1]}", "bytes": len(data)})
    targets = len(plan["targets"])
    per_target = {kind: sent // targets for kind, sent in tally.items()}
    print(json.dumps({"sent_per_target": per_target, "answers": answers}))
    return 0


def _udp_packet(source: tuple[str, int], destination: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4 UDP packet from any address we like: what a raw socket sends as it is."""
    source_ip, destination_ip = socket.inet_aton(source[0]), socket.inet_aton(destination[0])
    length = 8 + len(payload)
    pseudo = source_ip + destination_ip + struct.pack("!BBH", 0, socket.IPPROTO_UDP, length)
    header = struct.pack("!HHHH", source[1], destination[1], length, 0)
    checksum = _internet_checksum(pseudo + header + payload) or 0xFFFF
    header = struct.pack("!HHHH", source[1], destination[1], length, checksum)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + length,
        0,
        0x4000,
        64,
        socket.IPPROTO_UDP,
        0,
        source_ip,
        destination_ip,
    )
    return ip + header + payload


def _internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int(word) for word in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


# --- keep-alive ----------------------------------------------------------------------


UDP_TIMEOUT = 10
KEEPALIVE_INTERVAL = 4.0
SEND_EVERY = 12.0
"""Longer than the UDP timeout: between two bursts every binding would expire."""
DURATION = 60.0


def test_keepalive_holds_the_path_and_recovers_from_a_flush(world: LabWorld, peers: Peers) -> None:
    """
    Two pairs at once, restricted cone to port-restricted cone, both NATs
    forgetting idle UDP flows after 10 s; the offerer sends a burst every
    12 s for 60 s.  With keep-alive every 4 s every burst arrives; without
    it only the first does, since by the second both NATs have forgotten
    the flow and the port-restricted one drops what comes in.

    Then the receiving side's NAT forgets everything (a router reboot that
    keeps its configuration) while the offerer streams: the receiver's next
    keep-alive opens its NAT again, and data must flow within three
    keep-alive intervals.
    """
    lab = world.lab
    nats = [lab.nat("restricted"), lab.nat("portrestr")]
    for nat in nats:
        nat.set_udp_timeout(UDP_TIMEOUT)
    try:
        streaming = ["--send-every", str(SEND_EVERY), "--duration", str(DURATION), "--burst", "2"]
        kept = start_pair(
            peers,
            ("restricted", 0),
            ("portrestr", 0),
            "--keepalive-interval",
            str(KEEPALIVE_INTERVAL),
            offerer_options=streaming,
        )
        unkept = start_pair(
            peers,
            ("restricted", 1),
            ("portrestr", 1),
            "--no-keepalive",
            offerer_options=streaming,
        )
        connected = {}
        for label, (alice, bob, _) in (("kept", kept), ("unkept", unkept)):
            connected[label] = alice.wait_for("connected", timeout=30)[0]["time"]
            bob.wait_for("data", 2, timeout=10)
        bursts = int(DURATION // SEND_EVERY) + 1
        kept_bob, unkept_bob = kept[1], unkept[1]
        arrived = kept_bob.wait_for("data", 2 * bursts, timeout=DURATION + 10)
        assert arrived[-1]["time"] - connected["kept"] >= DURATION - 1
        time.sleep(max(0.0, connected["unkept"] + DURATION + 2 - time.time()))
        late = [e for e in unkept_bob.of("data") if e["seq"] > 2]
        assert late == [], "without keep-alive, data still arrived after the idle time"
        assert unkept[0].of("sent")[-1]["count"] == 2 * bursts
        unkept[0].stop()
        unkept_bob.stop()

        alice, bob, b_name = kept
        received = len(bob.of("data"))
        alice.command(f"stream {b_name} 0.25 25")
        bob.wait_for("data", received + 4, timeout=10)
        lab.nat("portrestr").flush_conntrack()
        flushed = time.time()
        back = bob.wait_for("data", 1, timeout=20, where=lambda e: e["time"] > flushed)[0]
        delay = back["time"] - flushed
        assert delay < 3 * KEEPALIVE_INTERVAL
        bob.wait_for("data", 4, timeout=5, where=lambda e: e["time"] > flushed)
        assert alice.of("lost") == [] and bob.of("lost") == []
        print(
            f"\nkeep-alive: {len(arrived)} of {2 * bursts} datagrams over {DURATION:.0f} s; "
            f"without: {len(unkept_bob.of('data'))}; "
            f"data back {delay * 1000:.0f} ms after the flush"
        )
    finally:
        for nat in nats:
            nat.set_udp_timeout(DEFAULT_UDP_TIMEOUT)
