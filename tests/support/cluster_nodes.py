"""
Rendezvous nodes on Redis as processes of their own (C{twistd -n nat server
--redis ...}), for the tests that kill one with SIGKILL and for the lab test
with peers on different nodes, and a redis-server for them in the lab.

Where they run is a L{Place}: on this machine's loopback
(L{on_loopback}) or in the lab's internet namespace (L{in_lab}).  A node
is handed over once its status says it reached Redis, so that the peers
registering next find the cluster whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any

import attrs

from tests.netutil import free_tcp_port, free_udp_ports
from tests.support.coturn import _die_with_parent_hook
from tests.support.natlab import Lab, child_environment
from tests.support.peer_runner import PeerProcess
from tests.support.redis import RedisServer, require_redis

Spawn = Callable[[Sequence[str]], "subprocess.Popen[Any]"]
Run = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]

_TWISTD = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"

_NODE_READY = r"""
import json, sys, time, urllib.request
url, redis = sys.argv[1], sys.argv[2] == "redis"
direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for _ in range(400):
    try:
        with direct.open(url, timeout=0.5) as answer:
            cluster = json.load(answer).get("cluster")
        if not redis or (cluster or {}).get("redis_connected"):
            sys.exit(0)
    except (OSError, ValueError):
        pass
    time.sleep(0.05)
sys.exit(f"the node with status {url} did not answer (and reach Redis) in 20 s")
"""

_STATUS = r"""
import sys, urllib.request
direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with direct.open(sys.argv[1], timeout=5) as answer:
    sys.stdout.write(answer.read().decode())
"""

_REDIS_READY = r"""
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
for _ in range(200):
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            if sock.recv(64).startswith(b"+PONG"):
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.05)
sys.exit(f"redis-server on {host}:{port} did not answer")
"""


@attrs.frozen
class Place:
    """
    Where nodes run: an address, a way to start a process there and one to
    run one to completion, and a way to pick free ports there.
    """

    host: str
    spawn: Spawn
    run: Run
    tcp_port: Callable[[], int]
    udp_port: Callable[[], int]


def _popen(argv: Sequence[str]) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
        env=child_environment(),
        preexec_fn=_die_with_parent_hook(),
    )


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=60, env=child_environment()
    )


def on_loopback() -> Place:
    """127.0.0.1 of this machine; the caller stops what it spawns (L{Node.stop})."""
    host = "127.0.0.1"
    return Place(
        host, _popen, _run, lambda: free_tcp_port(host), lambda: free_udp_ports(1, host)[0]
    )


def in_lab(lab: Lab, first_port: int = 8800) -> Place:
    """
    The lab's internet namespace, on its first address; the lab stops what
    it spawns at teardown.  Ports are counted up from C{first_port}: the
    namespace is the lab's own, so nothing else holds them.
    """
    inet = lab.internet.namespace
    ports = iter(range(first_port, first_port + 1000))
    return Place(
        lab.internet.addresses[0],
        lambda argv: lab.spawn(inet, argv, stdout=subprocess.DEVNULL),
        lambda argv: lab.run(inet, argv, timeout=60),
        lambda: next(ports),
        lambda: next(ports),
    )


@attrs.define
class Node:
    """One C{twistd nat server --redis} process, as a test sees it."""

    process: subprocess.Popen[Any]
    place: Place
    port: int
    status_port: int

    @property
    def host(self) -> str:
        return self.place.host

    def status(self) -> dict[str, Any]:
        """What its C{--status} serves now."""
        url = f"http://{self.host}:{self.status_port}/"
        got = self.place.run([sys.executable, "-c", _STATUS, url])
        if got.returncode != 0:
            raise RuntimeError(f"no status from {url}: {got.stderr}")
        status: dict[str, Any] = json.loads(got.stdout)
        return status

    @property
    def endpoint(self) -> str:
        """The client endpoint string of its rendezvous server."""
        return f"tcp:host={self.host}:port={self.port}"

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind, its presence entries stay in Redis."""
        with suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_node(
    place: Place, redis: str | None, options: Sequence[str] = (), logfile: str = "/dev/null"
) -> Node:
    """
    A rendezvous node (and a plain STUN server) at C{place} sharing C{redis},
    or a server on its own without; handed over once it serves (and reached
    Redis).  C{options} are more of C{twistd nat server}'s.
    """
    host, port, status_port = place.host, place.tcp_port(), place.tcp_port()
    server = ["nat", "server", "--single", "--address", host, "--port", str(place.udp_port())]
    server += ["--rendezvous", f"tcp:{port}:interface={host}"]
    server += ["--status", f"tcp:{status_port}:interface={host}", *options]
    if redis is not None:
        server += ["--redis", redis]
    argv = [sys.executable, "-c", _TWISTD, "-n", "--pidfile=", f"--logfile={logfile}", *server]
    node = Node(place.spawn(argv), place, port, status_port)
    url = f"http://{host}:{status_port}/"
    ready = place.run([sys.executable, "-c", _NODE_READY, url, "redis" if redis else "alone"])
    if ready.returncode != 0:
        node.stop()
        raise RuntimeError(f"a rendezvous node did not start: {ready.stderr}")
    return node


@contextmanager
def nodes_on_loopback(redis: str, count: int) -> Iterator[list[Node]]:
    """C{count} nodes on 127.0.0.1 sharing C{redis}, stopped afterwards."""
    place = on_loopback()
    started: list[Node] = []
    try:
        for _ in range(count):
            started.append(start_node(place, redis))
        yield started
    finally:
        for node in started:
            node.stop()


def start_redis_in_lab(lab: Lab, workdir: str, port: int = 6379) -> RedisServer:
    """
    A redis-server in the lab's internet namespace, on its first address;
    the lab stops it at teardown.  Its files go in C{workdir}.
    """
    host = lab.internet.addresses[0]
    server = RedisServer(require_redis(), port, workdir, host=host, protected=False)
    lab.spawn(lab.internet.namespace, server.argv(), stdout=subprocess.DEVNULL)
    ready = lab.run(lab.internet.namespace, [sys.executable, "-c", _REDIS_READY, host, str(port)])
    if ready.returncode != 0:
        raise RuntimeError(
            f"redis-server did not start in the lab: {ready.stderr}{server.read_log()[-2000:]}"
        )
    return server


def loopback_peer(name: str, *nodes: Node, options: Sequence[str] = ()) -> PeerProcess:
    """A C{peer_runner} on 127.0.0.1 registering at the first of C{nodes} that answers."""
    argv = [sys.executable, "-m", "tests.support.peer_runner", "--name", name]
    argv += ["--interface", "127.0.0.1", "--no-detect", *options]
    argv += [f"--rendezvous={node.endpoint}" for node in nodes]
    process = subprocess.Popen(
        argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
        env=child_environment(),
        preexec_fn=_die_with_parent_hook(),
    )
    return PeerProcess(process, name)


SAFETY = 60.0
"""Seconds any one step of L{kill_a_node} may take before it fails: a bound, not a measurement."""


def kill_a_node(one: Node, two: Node) -> float:
    """
    bob registered at node C{one} (and knowing C{two}), alice and carol at
    C{two}; alice connects to bob and sends.  C{one} gets SIGKILL; carol
    offers to bob until he is reachable, and alice's connection must carry
    data both ways throughout.  Returns the seconds from the kill to
    carol's connection to bob (each peer stamps its events with the same
    machine clock).  A step that does not happen within L{SAFETY} seconds
    fails with the peers' recent events.
    """
    peers: list[PeerProcess] = []
    try:
        bob = loopback_peer("bob", one, two)
        peers.append(bob)
        alice = loopback_peer("alice", two)
        peers.append(alice)
        carol = loopback_peer("carol", two, options=["--wait-for-peer", str(SAFETY)])
        peers.append(carol)
        for peer in peers:
            peer.wait_for("ready", timeout=SAFETY)
        alice.command("connect bob")
        alice.wait_for("connected", timeout=SAFETY, peer="bob")
        alice.command("send bob 3")
        bob.wait_for("data", 3, timeout=SAFETY, peer="alice")

        killed = time.time()
        one.kill()
        carol.command("connect bob")
        [connected] = carol.wait_for("connected", timeout=SAFETY, peer="bob")
        alice.command("send bob 3")
        bob.wait_for("data", 6, timeout=SAFETY, peer="alice")
        bob.command("send alice 1")
        alice.wait_for("data", timeout=SAFETY, peer="bob")
        if carol.of("failed") or alice.of("failed"):
            raise AssertionError(f"failed offers: {carol.of('failed') + alice.of('failed')}")
        return float(connected["time"]) - killed
    finally:
        for peer in peers:
            peer.stop()
