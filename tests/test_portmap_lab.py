"""
Port mapping against a real gateway: Debian's miniupnpd on a lab NAT (a
symmetric NAT with random ports), serving PCP, NAT-PMP and UPnP-IGD; a
second random-port symmetric NAT, without a gateway that maps, beside it.

For each protocol, a L{PortMapper} in the peer's namespace
(L{tests.support.portmap_runner}) gets a mapping of its socket's port; the
mapping shows as a C{dnat} rule in the router's nftables ruleset; a
datagram from the internet to the mapped address reaches the socket (and
its echo gets back); the mapping is renewed at half a short lease and
outlives it; after miniupnpd restarts (forgetting every mapping, as a
rebooted router does) the mapping is back within one renewal; and
stopping the mapper deletes it.

And the point of it all: two peers behind the two random-port symmetric
NATs, which no punch connects (tests/test_punch_lab.py), connect directly
once the one gateway maps, whichever of them offers, by each protocol.
"""

from __future__ import annotations

import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest

from tests.support.lab_fixtures import LabWorld, Peers, lab_world
from tests.support.miniupnpd import Miniupnpd, require_miniupnpd
from tests.support.natlab import Lab, Nat, NatSpec, NatType
from twisted_nat.portmap.announce import ANNOUNCE_SPREAD

pytestmark = pytest.mark.lab

LEASE = 10
"""Seconds of lease asked for: a renewal every 5 s."""

TRIALS = int(os.environ.get("PORTMAP_LAB_TRIALS", "1"))
"""Pairs per protocol and direction in the connection proof (the benchmark runs 20)."""

_SEND = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind((sys.argv[3], 0))
    s.settimeout(0.5)
    for attempt in range(10):
        s.sendto(b"hello from outside", (host, port))
        try:
            data, source = s.recvfrom(2048)
        except OSError:
            continue
        print(data.decode(), source[0], source[1])
        sys.exit(0)
sys.exit("no echo")
"""


@attrs.frozen
class Gateway:
    world: LabWorld
    nat: Nat
    miniupnpd: Miniupnpd

    @property
    def lab(self) -> Lab:
        return self.world.lab


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    """One lab NAT with miniupnpd on its router, torn down after the module."""
    binary = require_miniupnpd()
    with (
        lab_world([NatSpec("gw", NatType.SYMMETRIC), NatSpec("far", NatType.SYMMETRIC)]) as world,
        tempfile.TemporaryDirectory() as workdir,
    ):
        nat = world.lab.nat("gw")
        server = Miniupnpd(world.lab, nat, workdir, binary)
        try:
            server.start()
            yield Gateway(world, nat, server)
        finally:
            server.stop()


class Runner:
    """A port mapper process in the NAT's peer namespace, and its events."""

    def __init__(self, gateway: Gateway, mode: str) -> None:
        argv = [sys.executable, "-m", "tests.support.portmap_runner", "--mode", mode]
        self.process = gateway.lab.spawn(
            gateway.nat.peer.namespace, [*argv, "--lifetime", str(LEASE)], stdin=subprocess.PIPE
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.events.put(json.loads(line))

    def wait(
        self,
        event: str,
        timeout: float = 30.0,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {event} event within {timeout} s")
            try:
                found = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if found["event"] == event and where(found):
                return found

    def command(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def status(self) -> dict[str, Any]:
        self.command("status")
        return self.wait("status")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


@pytest.fixture
def runner(gateway: Gateway) -> Iterator[Callable[[str], Runner]]:
    started: list[Runner] = []

    def start(mode: str) -> Runner:
        made = Runner(gateway, mode)
        started.append(made)
        return made

    try:
        yield start
    finally:
        for made in started:
            made.close()


def dnat_rule(gateway: Gateway, port: int) -> bool:
    """Whether miniupnpd's ruleset forwards C{port} to the peer."""
    target = f"dnat ip to {gateway.nat.peer.address}:{port}"
    return any(
        f"dport {port} " in line and target in line
        for line in gateway.miniupnpd.ruleset().splitlines()
    )


def reaches(gateway: Gateway, runner: Runner, external: str) -> None:
    """A datagram from the internet to C{external} reaches the socket, and its echo gets back."""
    host, port = external.rsplit(":", 1)
    sender = gateway.lab.internet.addresses[3]
    sent = gateway.lab.run(
        gateway.lab.internet.namespace, [sys.executable, "-c", _SEND, host, port, sender]
    )
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.split() == ["echo", "hello", "from", "outside", host, port]
    received = runner.wait("received")
    assert received["data"] == "hello from outside"
    assert received["source"][0] == sender


def until(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return check()


@pytest.mark.parametrize("mode", ["pcp", "natpmp", "upnp"])
def test_mapping_renewed_restored_and_deleted(
    gateway: Gateway, runner: Callable[[str], Runner], mode: str
) -> None:
    mapper = runner(mode)
    made = mapper.wait("changed")["new"]
    assert made["protocol"] == mode and made["lifetime"] == LEASE
    external = made["external"]
    host, port = external.rsplit(":", 1)
    assert host == gateway.nat.public_address
    assert dnat_rule(gateway, int(port))
    reaches(gateway, mapper, external)

    # Renewed at half the lease, and alive past the lease's end.
    time.sleep(LEASE + 1)
    status = mapper.status()
    assert status["renewed"] >= 2, status
    assert status["mapping"]["external"] == external
    assert dnat_rule(gateway, int(port))
    reaches(gateway, mapper, external)

    # The gateway restarts and forgets: the mapping is back within one renewal.
    gateway.miniupnpd.restart()
    restarted = time.monotonic()
    assert not dnat_rule(gateway, int(port))
    assert until(lambda: mapper.status()["restored"] == 1, LEASE / 2 + 5), mapper.status()
    within = time.monotonic() - restarted
    assert within <= LEASE / 2 + 5
    now = mapper.status()["mapping"]["external"]
    assert dnat_rule(gateway, int(now.rsplit(":", 1)[1]))
    reaches(gateway, mapper, now)

    # Stopping deletes it.
    mapper.command("stop")
    stopped = mapper.wait("stopped")
    assert stopped["mapping"] is None
    assert not dnat_rule(gateway, int(now.rsplit(":", 1)[1]))


def test_auto_takes_pcp_first(gateway: Gateway, runner: Callable[[str], Runner]) -> None:
    mapper = runner("auto")
    made = mapper.wait("changed")["new"]
    assert made["protocol"] == "pcp"
    mapper.command("stop")
    mapper.wait("stopped")


@pytest.fixture
def peers(gateway: Gateway) -> Iterator[Peers]:
    """The test's peer processes, stopped after it whatever happened."""
    started = Peers(gateway.world)
    try:
        yield started
    finally:
        started.stop_all()


_pairs = iter(range(1, 1000))


@pytest.mark.parametrize("mapped_offers", [True, False], ids=["mapped-offers", "mapped-answers"])
@pytest.mark.parametrize("mode", ["pcp", "natpmp", "upnp"])
def test_two_random_symmetric_nats_connect_directly_when_one_maps(
    gateway: Gateway, peers: Peers, mode: str, mapped_offers: bool
) -> None:
    """
    C{TRIALS} pairs (fresh sockets, fresh mappings), each connecting on a
    direct path to the mapped address or from it; set-up times printed.
    """
    serial = next(_pairs)
    mapped_name, far_name = f"m{serial}", f"f{serial}"
    mapping = ("--port-mapping", mode)
    if mapped_offers:
        far = peers.start("far", far_name, "--no-detect", instances=TRIALS)
        mapped = peers.start(
            "gw", mapped_name, "--no-detect", *mapping, "--connect", far_name, instances=TRIALS
        )
        offerer, answerer = mapped, far
    else:
        mapped = peers.start("gw", mapped_name, "--no-detect", *mapping, instances=TRIALS)
        far = peers.start(
            "far", far_name, "--no-detect", "--connect", mapped_name, instances=TRIALS
        )
        offerer, answerer = far, mapped
    ready = mapped.wait_for("ready", TRIALS, timeout=30 + TRIALS)
    externals = {
        f"{c['host']}:{c['port']}"
        for event in ready
        for c in event["candidates"]
        if c["type"] == "mapped"
    }
    assert len(externals) == TRIALS, ready
    assert {e.rsplit(":", 1)[0] for e in externals} == {gateway.nat.public_address}
    done = offerer.wait_for("done", timeout=30 + TRIALS * 12)[0]
    assert offerer.of("failed") == [] and done["failed"] == 0
    connected = offerer.of("connected")
    answerer.wait_for("connected", TRIALS, timeout=15)
    assert len(connected) == TRIALS
    for event in connected:
        assert not event["path"]["relayed"], event
        if mapped_offers:
            assert event["path"]["local"] == "mapped", event
        else:
            assert event["path"]["remote_address"] in externals, event
    setups = sorted(e["setup_ms"] for e in connected)
    print(
        f"\n{mode}, mapped side {'offers' if mapped_offers else 'answers'}: "
        f"{len(connected)}/{TRIALS} direct, set-up median {statistics.median(setups):.0f} ms, "
        f"max {setups[-1]:.0f} ms"
    )


def test_without_the_mapping_they_do_not_connect(gateway: Gateway, peers: Peers) -> None:
    """The control: the same two NATs, nobody maps, and the punch fails."""
    serial = next(_pairs)
    common = ("--no-detect", "--punch-timeout", "3")
    near = peers.start("gw", f"m{serial}", *common)
    far = peers.start("far", f"f{serial}", *common)
    near.wait_for("ready", timeout=30)
    far.wait_for("ready", timeout=30)
    near.command(f"connect f{serial}")
    [failed] = near.wait_for("failed", timeout=20)
    assert failed["error_type"] == "PunchFailed", failed


def test_a_gateway_restart_mid_connection(gateway: Gateway, peers: Peers) -> None:
    """
    miniupnpd restarts (forgetting every mapping) while the far peer streams
    to the mapped one: the mapping is back within one renewal, and the
    connection carries on without being lost.
    """
    serial = next(_pairs)
    mapped_name, far_name = f"m{serial}", f"f{serial}"
    lease = ("--port-mapping-lease", str(LEASE))
    mapped = peers.start("gw", mapped_name, "--no-detect", "--port-mapping", "pcp", *lease)
    mapped.wait_for("ready", timeout=30)
    far = peers.start("far", far_name, "--no-detect", "--connect", mapped_name)
    far.wait_for("connected", timeout=30)
    mapped.wait_for("connected", timeout=10)
    far.command(f"stream {mapped_name} 0.1 30")
    mapped.wait_for("data", timeout=10)
    # An epoch tells a restart only past RFC 6887's tolerance of 2 s: let
    # the gateway's uptime grow past it (one renewal) before restarting.
    assert until(lambda: mapped.status()["port_mapping"]["renewed"] >= 1, LEASE)
    external = mapped.status()["port_mapping"]["mapping"]["external"]

    gateway.miniupnpd.restart()
    restarted = time.monotonic()

    def restored() -> bool:
        return bool(mapped.status()["port_mapping"]["restored"] == 1)

    assert not dnat_rule(gateway, int(external.rsplit(":", 1)[1]))
    assert until(restored, LEASE / 2 + 5), mapped.status()["port_mapping"]
    assert time.monotonic() - restarted <= LEASE / 2 + 5
    now = mapped.status()["port_mapping"]["mapping"]["external"]
    assert dnat_rule(gateway, int(now.rsplit(":", 1)[1]))
    before = mapped.status()["received"][far_name]
    assert until(lambda: mapped.status()["received"][far_name] >= before + 10, 5)
    assert mapped.of("lost") == [] and far.of("lost") == []


def test_a_gateway_announcing_its_restart_is_asked_again_at_once(
    gateway: Gateway, peers: Peers
) -> None:
    """
    miniupnpd multicasts a PCP ANNOUNCE when it starts: a peer whose lease
    would be renewed only in a minute hears it, and has its mapping back
    within the announcement's spread, not at the renewal.
    """
    serial = next(_pairs)
    lease = 120
    mapped = peers.start(
        "gw",
        f"m{serial}",
        "--no-detect",
        "--port-mapping",
        "pcp",
        "--port-mapping-lease",
        str(lease),
    )
    mapped.wait_for("ready", timeout=30)
    external = mapped.status()["port_mapping"]["mapping"]["external"]
    time.sleep(3)  # past RFC 6887's 2 s of tolerance, so the new epoch tells the restart

    gateway.miniupnpd.restart()
    restarted = time.monotonic()
    assert not dnat_rule(gateway, int(external.rsplit(":", 1)[1]))

    def restored() -> bool:
        return bool(mapped.status()["port_mapping"]["restored"] == 1)

    assert until(restored, ANNOUNCE_SPREAD + 5), mapped.status()["port_mapping"]
    took = time.monotonic() - restarted
    status = mapped.status()["port_mapping"]
    assert status["announced"] == 1 and status["renewed"] == 1, status
    now = status["mapping"]["external"]
    assert dnat_rule(gateway, int(now.rsplit(":", 1)[1]))
    print(f"\nmapping back {took:.1f} s after the restart (renewal due in {lease / 2:.0f} s)")
