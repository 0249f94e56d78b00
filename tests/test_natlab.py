"""
The NAT lab's NATs behave as named, checked with plain sockets before anything relies on them.

Every later NAT traversal test trusts L{tests.support.natlab} to build a full cone when
asked for one; a lab that quietly built the wrong NAT would make those tests pass or fail
for the wrong reason.  So each NAT type is probed here from both sides: a peer agent in
the peer namespace and an echo agent in the internet namespace, both small socket
programs run with C{ip netns exec}, driven over their stdin and reporting on stdout.

Negative checks ("this packet must not arrive") are only meaningful next to a positive
one that shares the path, so every window of forbidden senders ends with a permitted
one, and the forbidden packets are sent first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from tests.support.coturn import require_tool
from tests.support.natlab import (
    SEQUENTIAL_PORTS,
    Lab,
    Nat,
    NatSpec,
    NatType,
    cleanup_stale_labs,
    lab_namespaces,
    nat_lab,
    require_lab,
)

pytestmark = pytest.mark.lab

AGENT: Final = r"""
import json, os, select, socket, sys, time

sockets = {}
names = {}


def emit(**event):
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


def bind(host, port, echo):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((host, port))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    sockets[sock.fileno()] = (sock, echo)
    names[f"{host}:{port}"] = sock
    emit(ev="bound", host=host, port=port)


def handle(command):
    if command["op"] == "bind":
        bind(command["host"], command["port"], command["echo"])
    elif command["op"] == "send":
        sock = names[command["from"]]
        for number in range(command["count"]):
            payload = command["data"] if command["count"] == 1 else f"{command['data']}#{number}"
            sock.sendto(payload.encode(), tuple(command["to"]))
            if command["interval"]:
                time.sleep(command["interval"])


buffer = b""
emit(ev="ready")
while True:
    readable, _, _ = select.select([0, *sockets], [], [])
    for fd in readable:
        if fd == 0:
            chunk = os.read(0, 65536)
            if not chunk:
                sys.exit(0)
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                handle(json.loads(line))
            continue
        sock, echo = sockets[fd]
        local = list(sock.getsockname())
        while True:
            try:
                data, source = sock.recvfrom(65536)
            except BlockingIOError:
                break
            if echo:
                report = {"echo": data.decode(), "seen": list(source), "at": local}
                sock.sendto(json.dumps(report).encode(), source)
            else:
                emit(ev="recv", at=local, src=list(source), data=data.decode())
"""
"""
A UDP agent: binds sockets on command, sends from them on command, and either echoes
what arrives (reporting the source address it saw, like a STUN server) or reports it.
"""

PEER_PORTS: Final = (40000, 40001, 40002)
"""Fixed private ports: each namespace has its own port space, so nothing else has them."""

GRACE_SECONDS: Final = 0.3
"""How long after the permitted packet a forbidden one could still be in flight."""

Address = tuple[str, int]


class Agent:
    """The test's handle on one L{AGENT} process."""

    def __init__(self, lab: Lab, namespace: str) -> None:
        self.namespace = namespace
        self.process = lab.spawn(namespace, [sys.executable, "-c", AGENT], stdin=subprocess.PIPE)
        self._events: list[dict[str, Any]] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for(lambda event: event["ev"] == "ready", timeout=15)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self._events.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self._events.append({"ev": "eof"})
            self._changed.notify_all()

    def _command(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()

    def bind(self, host: str, port: int, *, echo: bool = False) -> Address:
        """Bind a socket and return its address as L{send} wants it for C{source}."""
        self._command(op="bind", host=host, port=port, echo=echo)
        self.wait_for(lambda e: e["ev"] == "bound" and [e["host"], e["port"]] == [host, port])
        return (host, port)

    def send(
        self, source: Address, to: Address, data: str, *, count: int = 1, interval: float = 0.0
    ) -> None:
        """Send C{data} (numbered C{#0}... when C{count} > 1) from a bound socket."""
        self._command(
            op="send",
            **{"from": f"{source[0]}:{source[1]}"},
            to=list(to),
            data=data,
            count=count,
            interval=interval,
        )

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 5.0
    ) -> dict[str, Any]:
        """Return the first event so far or within C{timeout} that C{predicate} accepts."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for event in self._events:
                    if event["ev"] == "eof":
                        raise AssertionError(f"agent in {self.namespace} exited")
                    if predicate(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no matching event from the agent in {self.namespace}")
                self._changed.wait(remaining)

    def received(self, data: str) -> list[dict[str, Any]]:
        """Every reported datagram whose payload is exactly C{data}, or starts C{data#}."""
        with self._changed:
            return [
                event
                for event in self._events
                if event["ev"] == "recv"
                and (event["data"] == data or event["data"].startswith(data + "#"))
            ]

    def echoes(self, data: str) -> list[dict[str, Any]]:
        """The echo server's reports for the datagrams sent as C{data} (see L{send})."""
        with self._changed:
            reports = [json.loads(event["data"]) for event in self._events if _is_echo(event)]
        return [
            report
            for report in reports
            if report["echo"] == data or report["echo"].startswith(data + "#")
        ]


def _is_echo(event: dict[str, Any]) -> bool:
    return bool(event["ev"] == "recv" and event["data"].startswith('{"echo"'))


def _received(data: str) -> Callable[[dict[str, Any]], bool]:
    """A L{Agent.wait_for} predicate for the datagram sent as C{data}."""
    return lambda event: bool(event["ev"] == "recv" and event["data"] == data)


def _received_echo(data: str) -> Callable[[dict[str, Any]], bool]:
    """A L{Agent.wait_for} predicate for the echo of the datagram sent as C{data}."""
    return lambda event: _is_echo(event) and json.loads(event["data"])["echo"] == data


class World:
    """The module's lab with an echo agent on the internet side, and peer agents on demand."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        addresses = lab.internet.addresses
        self.server_a: Address = (addresses[0], 3478)
        self.server_a2: Address = (addresses[0], 3479)
        self.server_b: Address = (addresses[1], 3478)
        self.server_b2: Address = (addresses[1], 3479)
        self.other: Address = (addresses[2], 4000)
        self.internet = Agent(lab, lab.internet.namespace)
        for address in (self.server_a, self.server_a2, self.server_b, self.server_b2):
            self.internet.bind(*address, echo=True)
        self.internet.bind(*self.other)
        self._peers: dict[str, Agent] = {}
        self._tags = 0

    def peer(self, nat: str, index: int = 0) -> Agent:
        """The agent of a peer, with sockets on every port of L{PEER_PORTS}."""
        namespace = self.lab.nat(nat).peers[index].namespace
        if namespace not in self._peers:
            agent = Agent(self.lab, namespace)
            for port in PEER_PORTS:
                agent.bind("0.0.0.0", port)
            self._peers[namespace] = agent
        return self._peers[namespace]

    def tag(self, label: str) -> str:
        """A payload no other send in this module uses."""
        self._tags += 1
        return f"{label}-{self._tags}"

    def mapping(self, agent: Agent, port: int, server: Address) -> Address:
        """Send from C{port} to the echo C{server}, return the source address it saw."""
        data = self.tag("map")
        agent.send(("0.0.0.0", port), server, data)
        event = agent.wait_for(_received_echo(data))
        host, seen_port = json.loads(event["data"])["seen"]
        return (host, seen_port)

    def inbound(
        self, agent: Agent, to: Address, *, forbidden: list[Address], allowed: list[Address]
    ) -> tuple[list[Address], list[Address]]:
        """
        Send from internet sockets to C{to}; return which senders reached the peer.

        Forbidden senders go first, so the wait for the allowed ones also covers them;
        a short grace period afterwards catches any still in flight.
        """
        tags = {sender: self.tag("in") for sender in [*forbidden, *allowed]}
        for sender in [*forbidden, *allowed]:
            self.internet.send(sender, to, tags[sender])
        for sender in allowed:
            try:
                agent.wait_for(_received(tags[sender]))
            except AssertionError:
                break
        time.sleep(GRACE_SECONDS)
        reached = [sender for sender in tags if agent.received(tags[sender])]
        return (
            [sender for sender in forbidden if sender in reached],
            [sender for sender in allowed if sender in reached],
        )


SPECS: Final = (
    NatSpec("none", NatType.NONE),
    NatSpec("full", NatType.FULL_CONE),
    NatSpec("rest", NatType.RESTRICTED_CONE),
    NatSpec("prc", NatType.PORT_RESTRICTED_CONE),
    NatSpec("sym", NatType.SYMMETRIC),
    NatSpec("lossy", NatType.PORT_RESTRICTED_CONE),
    NatSpec("tfull", NatType.FULL_CONE),
    NatSpec("trest", NatType.RESTRICTED_CONE, udp_timeout=3),
    NatSpec("tprc", NatType.PORT_RESTRICTED_CONE),
    NatSpec("hair", NatType.PORT_RESTRICTED_CONE, peers=2, hairpin=True),
    NatSpec("nohair", NatType.PORT_RESTRICTED_CONE, peers=2),
    NatSpec("flush", NatType.FULL_CONE),
    NatSpec("seq", NatType.SYMMETRIC_SEQUENTIAL),
)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    require_lab()
    with nat_lab(SPECS) as lab:
        yield World(lab)


def test_lab_layout(world: World) -> None:
    """
    The documented address plan holds, and building stays fast enough to do per module.
    """
    lab = world.lab
    assert lab.internet.addresses == (
        "203.0.113.10",
        "203.0.113.11",
        "203.0.113.12",
        "203.0.113.13",
    )
    assert lab.nat("none").peer.address == "203.0.113.130"
    assert lab.nat("full").public_address == "203.0.113.65"
    assert lab.nat("full").peer.address == "198.51.100.2"
    assert [peer.address for peer in lab.nat("hair").peers] == ["198.51.100.130", "198.51.100.131"]
    assert sorted(lab_namespaces(lab.prefix)) == sorted(lab.namespaces)
    assert lab.build_seconds < 10, f"building took {lab.build_seconds:.2f} s"


def test_internet_has_a_default_route(world: World) -> None:
    """
    Sending from the internet to a private address succeeds (and goes nowhere): coturn
    tears down allocations whose relay gets C{ENETUNREACH}.
    """
    script = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.bind(('203.0.113.10', 0)); s.sendto(b'x', ('198.51.100.2', 9))"
    )
    result = world.lab.run(world.lab.internet.namespace, [sys.executable, "-c", script])
    assert result.returncode == 0, result.stderr


def test_no_nat(world: World) -> None:
    """The server sees the peer's own address, and anyone can reach the peer unasked."""
    peer = world.peer("none")
    own = world.lab.nat("none").peer.address
    assert world.mapping(peer, 40000, world.server_a) == (own, 40000)
    forbidden, allowed = world.inbound(peer, (own, 40001), forbidden=[], allowed=[world.other])
    assert allowed == [world.other]


def test_full_cone(world: World) -> None:
    """
    One public port towards every destination, and once the peer has sent anywhere,
    anyone may send to it.
    """
    nat = world.lab.nat("full")
    peer = world.peer("full")
    first = world.mapping(peer, 40000, world.server_a)
    assert first == (nat.public_address, 40000)
    assert world.mapping(peer, 40000, world.server_b2) == first
    mapped = world.mapping(peer, 40001, world.server_a)
    assert nat.learned_mappings()[mapped[1]] == (nat.peer.address, 40001)
    forbidden, allowed = world.inbound(
        peer, mapped, forbidden=[], allowed=[world.other, world.server_b2]
    )
    assert allowed == [world.other, world.server_b2]


def test_restricted_cone(world: World) -> None:
    """One public port everywhere; any port of a contacted address may send, no one else."""
    nat = world.lab.nat("rest")
    peer = world.peer("rest")
    first = world.mapping(peer, 40000, world.server_a)
    assert first == (nat.public_address, 40000)
    assert world.mapping(peer, 40000, world.server_b2) == first
    mapped = world.mapping(peer, 40001, world.server_a)
    forbidden, allowed = world.inbound(
        peer, mapped, forbidden=[world.server_b, world.other], allowed=[world.server_a2]
    )
    assert (forbidden, allowed) == ([], [world.server_a2])


def test_port_restricted_cone(world: World) -> None:
    """One public port everywhere (the private one), but only the contacted port may send."""
    nat = world.lab.nat("prc")
    peer = world.peer("prc")
    first = world.mapping(peer, 40000, world.server_a)
    assert first == (nat.public_address, 40000)
    assert world.mapping(peer, 40000, world.server_b2) == first
    mapped = world.mapping(peer, 40001, world.server_a)
    forbidden, allowed = world.inbound(
        peer,
        mapped,
        forbidden=[world.server_a2, world.server_b, world.other],
        allowed=[world.server_a],
    )
    assert (forbidden, allowed) == ([], [world.server_a])


def test_symmetric(world: World) -> None:
    """A new public port per destination, and only that destination may answer on it."""
    nat = world.lab.nat("sym")
    peer = world.peer("sym")
    mappings = [
        world.mapping(peer, 40000, server)
        for server in (world.server_a, world.server_a2, world.server_b)
    ]
    assert {host for host, _ in mappings} == {nat.public_address}
    assert len({port for _, port in mappings}) == 3, mappings
    forbidden, allowed = world.inbound(
        peer,
        mappings[0],
        forbidden=[world.server_a2, world.server_b2, world.other],
        allowed=[world.server_a],
    )
    assert (forbidden, allowed) == ([], [world.server_a])


def test_symmetric_sequential(world: World) -> None:
    """A new public port per destination, each the next one: predictable, and still strict."""
    nat = world.lab.nat("seq")
    peer = world.peer("seq")
    mappings = [
        world.mapping(peer, 40000, server)
        for server in (world.server_a, world.server_a2, world.server_b)
    ]
    assert {host for host, _ in mappings} == {nat.public_address}
    ports = [port for _, port in mappings]
    assert ports[1] == ports[0] + 1 and ports[2] == ports[1] + 1, ports
    assert all(port in SEQUENTIAL_PORTS for port in ports)
    forbidden, allowed = world.inbound(
        peer,
        mappings[0],
        forbidden=[world.server_a2, world.server_b2, world.other],
        allowed=[world.server_a],
    )
    assert (forbidden, allowed) == ([], [world.server_a])


def test_hairpinning(world: World) -> None:
    """
    With hairpinning on, peers behind one NAT reach each other through their public
    mappings and see each other's public addresses; without it, they do not.
    """
    hair = world.lab.nat("hair")
    first, second = world.peer("hair", 0), world.peer("hair", 1)
    first_public = world.mapping(first, 40000, world.server_a)
    second_public = world.mapping(second, 40002, world.server_a)
    tag = world.tag("hairpin")
    second.send(("0.0.0.0", 40002), first_public, tag)
    event = first.wait_for(_received(tag))
    assert tuple(event["src"]) == second_public
    assert second_public[0] == hair.public_address
    reply = world.tag("hairpin-reply")
    first.send(("0.0.0.0", 40000), tuple(event["src"]), reply)
    answer = second.wait_for(_received(reply))
    assert tuple(answer["src"]) == first_public

    first, second = world.peer("nohair", 0), world.peer("nohair", 1)
    first_public = world.mapping(first, 40000, world.server_a)
    world.mapping(second, 40002, world.server_a)
    tag = world.tag("no-hairpin")
    second.send(("0.0.0.0", 40002), first_public, tag)
    forbidden, allowed = world.inbound(first, first_public, forbidden=[], allowed=[world.server_a])
    assert allowed == [world.server_a]
    assert first.received(tag) == []


def test_loss(world: World) -> None:
    """
    Loss applies per direction, so half of each way loses about three echoes in four;
    turning it off loses nothing.
    """
    nat = world.lab.nat("lossy")
    peer = world.peer("lossy")
    count = 200
    for percent, low, high in ((50, 0.10, 0.42), (0, 1.0, 1.0)):
        nat.set_loss(percent)
        data = world.tag(f"loss{percent}")
        peer.send(("0.0.0.0", 40000), world.server_a, data, count=count, interval=0.001)
        if percent == 0:
            peer.wait_for(_received_echo(f"{data}#{count - 1}"))
        time.sleep(GRACE_SECONDS + 0.5)
        delivered = len(peer.echoes(data)) / count
        assert low <= delivered <= high, f"{percent}% loss delivered {delivered:.0%} of echoes"


def test_udp_timeout(world: World) -> None:
    """
    After the UDP timeout, an idle mapping is gone: neither the contacted server nor
    (for the cones) anyone else gets through, and the learned cone entries are gone too.
    One timeout comes from L{NatSpec.udp_timeout}, the others are set while running.
    """
    names = ("tfull", "trest", "tprc")
    nats = [world.lab.nat(name) for name in names]
    for nat in nats:
        if nat.spec.udp_timeout is None:
            nat.set_udp_timeout(3)
    mapped: dict[str, Address] = {}
    for nat in nats:
        mapped[nat.name] = world.mapping(world.peer(nat.name), 40000, world.server_a)
        if nat.type is not NatType.PORT_RESTRICTED_CONE:
            assert mapped[nat.name][1] in nat.learned_mappings()
    time.sleep(4.5)
    for nat in nats:
        peer = world.peer(nat.name)
        assert nat.learned_mappings() == {}
        tags = [world.tag("expired") for _ in range(2)]
        world.internet.send(world.server_a, mapped[nat.name], tags[0])
        world.internet.send(world.other, mapped[nat.name], tags[1])
        time.sleep(GRACE_SECONDS)
        assert [peer.received(tag) for tag in tags] == [[], []], nat.conntrack_entries()
        # The socket still works: a fresh outbound packet maps the port again.
        assert world.mapping(peer, 40000, world.server_a)[0] == nat.public_address


def test_flush_conntrack(world: World) -> None:
    """
    Flushing forgets the mapping and the learned cone entry; the next packet out makes
    a new one.
    """
    nat = world.lab.nat("flush")
    peer = world.peer("flush")
    mapped = world.mapping(peer, 40000, world.server_a)
    assert mapped[1] in nat.learned_mappings()
    nat.flush_conntrack()
    assert nat.learned_mappings() == {}
    assert nat.conntrack_entries() == []
    forbidden, _ = world.inbound(peer, mapped, forbidden=[world.server_a, world.other], allowed=[])
    assert forbidden == []
    assert world.mapping(peer, 40000, world.server_a) == mapped
    _, allowed = world.inbound(peer, mapped, forbidden=[], allowed=[world.other])
    assert allowed == [world.other]


STUN_VERDICTS: Final = {
    NatType.NONE: "Open",
    NatType.FULL_CONE: "Independent Mapping, Independent Filter",
    NatType.RESTRICTED_CONE: "Independent Mapping, Address Dependent Filter",
    NatType.PORT_RESTRICTED_CONE: "Independent Mapping, Port Dependent Filter",
    NatType.SYMMETRIC: "Dependent Mapping",
    NatType.SYMMETRIC_SEQUENTIAL: "Dependent Mapping",
}
"""The start of Debian C{stun}'s "Primary:" verdict for each type."""

WAIT_FOR_STUN: Final = """
import socket, sys, time
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.settimeout(0.1)
request = bytes.fromhex("000100002112a442") + bytes(12)
deadline = time.monotonic() + 10
while time.monotonic() < deadline:
    sock.sendto(request, (sys.argv[1], 3478))
    try:
        if sock.recv(2048)[:2] == bytes.fromhex("0101"):
            sys.exit(0)
    except OSError:
        pass
sys.exit("no STUN answer")
"""


def test_independent_classification(tmp_path: Path) -> None:
    """
    A STUN client nobody here wrote (Debian's C{stun}, RFC 3489/5780 behaviour discovery)
    against coturn in the internet namespace names every type as we do, and sees
    hairpinning exactly where it is switched on.
    """
    require_lab()
    stun = require_tool("stun")
    turnserver = require_tool("turnserver")
    specs = [NatSpec(nat_type.value.replace("-", "")[:12], nat_type) for nat_type in NatType]
    specs.append(NatSpec("hairpin", NatType.PORT_RESTRICTED_CONE, hairpin=True))
    with nat_lab(specs) as lab:
        primary, alternate = lab.internet.addresses[:2]
        coturn = [
            *(turnserver, "-n", "--no-cli", "--stun-only", "--no-tls", "--no-dtls"),
            *("-L", primary, "-L", alternate, "-p", "3478", "--alt-listening-port", "3479"),
            *("--log-file", "stdout", "--pidfile", str(tmp_path / "pid")),
            *("--userdb", str(tmp_path / "db")),
        ]
        # coturn warns "socket: Protocol not supported" on kernels without SCTP.
        lab.spawn(
            lab.internet.namespace, coturn, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        ready = lab.run(lab.internet.namespace, [sys.executable, "-c", WAIT_FOR_STUN, primary])
        assert ready.returncode == 0, ready.stderr
        clients = {
            spec: lab.spawn(
                lab.nat(spec.name).peer.namespace, [stun, primary], stderr=subprocess.STDOUT
            )
            for spec in specs
        }
        for spec, client in clients.items():
            output, _ = client.communicate(timeout=30)
            verdict = next(line for line in output.splitlines() if line.startswith("Primary:"))
            assert verdict.startswith(f"Primary: {STUN_VERDICTS[spec.type]}"), (spec, verdict)
            if spec.type is not NatType.NONE:
                assert ("will hairpin" in verdict) == spec.hairpin, (spec, verdict)


def _alive(pid: int) -> bool:
    """True unless C{pid} is gone or a zombie (which is as dead as it gets without a reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _lab_processes(lab: Lab, nat: Nat) -> tuple[list[subprocess.Popen[str]], int]:
    """Start a child in a peer and, in the internet, a shell that forks a grandchild."""
    child = lab.spawn(nat.peer.namespace, ["sleep", "300"])
    forker = lab.spawn(lab.internet.namespace, ["sh", "-c", "sleep 300 & echo $!; wait"])
    assert forker.stdout is not None
    grandchild = int(forker.stdout.readline())
    return [child, forker], grandchild


@pytest.mark.parametrize("failing", [False, True], ids=["normal-exit", "exception"])
def test_teardown(failing: bool) -> None:
    """
    Leaving the lab removes every namespace and stops every process in them, including
    ones the test never knew about, also when the body raised.
    """
    require_lab()

    class Boom(Exception):
        pass

    prefix = ""
    processes: list[subprocess.Popen[str]] = []
    grandchild = 0
    try:
        with nat_lab([NatSpec("t", NatType.SYMMETRIC)]) as lab:
            prefix = lab.prefix
            processes, grandchild = _lab_processes(lab, lab.nat("t"))
            assert len(lab_namespaces(prefix)) == 4
            if failing:
                raise Boom()
    except Boom:
        assert failing
    assert prefix and lab_namespaces(prefix) == []
    assert all(process.poll() is not None for process in processes)
    assert not _alive(grandchild)


def test_stale_labs_are_cleaned_up() -> None:
    """
    Namespaces of a lab whose owner died go, with their processes; a live owner's stay.
    """
    require_lab()
    finished = subprocess.Popen(["true"])
    finished.wait()
    stale = f"tn-{finished.pid}-beef-inet"
    sleeper: subprocess.Popen[bytes] | None = None
    try:
        with nat_lab([NatSpec("live")]) as lab:
            subprocess.run(["ip", "netns", "add", stale], check=True)
            sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "300"])
            deadline = time.monotonic() + 5
            while not _in_namespace(sleeper.pid, stale) and time.monotonic() < deadline:
                time.sleep(0.01)
            removed = cleanup_stale_labs()
            assert stale in removed
            assert sorted(lab_namespaces(lab.prefix)) == sorted(lab.namespaces)
            assert sleeper.wait(timeout=5) != 0
        assert lab_namespaces(stale) == []
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True)


def _in_namespace(pid: int, namespace: str) -> bool:
    """Whether C{ip netns exec} has already moved C{pid} into C{namespace}."""
    result = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True)
    return result.stdout.split() == [namespace]
