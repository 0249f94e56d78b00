"""
STUN and rendezvous servers in the NAT lab's internet namespace, and
detection runs in a peer's namespace: shared by the lab tests and the
benchmarks.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.support.coturn import CoturnMode, TurnCredentials, command_line, require_tool
from tests.support.natlab import Lab, Nat

OURS = 3478
OURS_ALTERNATE = 3479
COTURN = 3480
COTURN_ALTERNATE = 3481
RENDEZVOUS = 8765
TURN = 3482
TURN_CREDENTIALS = TurnCredentials("lab-user", "lab-password", "lab.test")

_READY = r"""
import os, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
request = bytes.fromhex("000100002112a442") + os.urandom(12)
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
    probe.settimeout(0.1)
    for _ in range(100):
        probe.sendto(request, (host, port))
        try:
            probe.recvfrom(2048)
            sys.exit(0)
        except OSError:
            time.sleep(0.05)
sys.exit(f"nothing answers on {host}:{port}")
"""


_RENDEZVOUS_SERVER = r"""
import sys
from twisted.internet import reactor
from twisted_nat.rendezvous import make_rendezvous_service
from twisted_nat.rendezvous.quotas import ServerLimits
# The lab puts dozens of peers behind each NAT's one address, as a carrier
# NAT does: the limits per address are raised as its operator would.
limits = ServerLimits(max_per_source=1024, register_rate=100.0, register_burst=1000)
make_rendezvous_service(reactor, sys.argv[1], limits=limits).startService()
reactor.run()
"""

_TCP_READY = r"""
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
for _ in range(200):
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.05)
sys.exit(f"nothing listens on {host}:{port}")
"""


def start_rendezvous(lab: Lab, port: int = RENDEZVOUS) -> str:
    """
    Our rendezvous server on the internet's first address, TCP port
    C{port}; returns the client endpoint string peers connect with, once
    the server accepts connections.

    It is started from Python rather than through C{twistd}, so that it
    needs nothing but L{make_rendezvous_service}.  Plain TCP: TLS would
    keep the offers' session keys from anyone on the path, but the lab's
    attacker is given the session id and never the key, so certificates
    would only add set-up.
    """
    host = lab.internet.addresses[0]
    inet = lab.internet.namespace
    server = f"tcp:{port}:interface={host}"
    lab.spawn(inet, [sys.executable, "-c", _RENDEZVOUS_SERVER, server], stdout=subprocess.DEVNULL)
    ready = lab.run(inet, [sys.executable, "-c", _TCP_READY, host, str(port)])
    if ready.returncode != 0:
        raise RuntimeError(f"the rendezvous server did not start: {ready.stderr}")
    return f"tcp:host={host}:port={port}"


def start_servers(lab: Lab, coturn: str | None, workdir: str) -> None:
    """
    Our RFC 5780 server (C{twistd nat server}) on the internet's first two
    addresses, ports L{OURS} and L{OURS_ALTERNATE}; coturn, when given, on
    the same addresses, ports L{COTURN} and L{COTURN_ALTERNATE}.  Returns
    once every socket answers.
    """
    primary, alternate = lab.internet.addresses[:2]
    inet = lab.internet.namespace
    twistd = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"
    server = ["nat", "server", "--no-rendezvous", "--address", primary, "--port", str(OURS)]
    server += ["--alternate-address", alternate, "--alternate-port", str(OURS_ALTERNATE)]
    # Dozens of peers share each NAT's address and discover its behaviour
    # at once: the per-address limit is raised as a carrier NAT's operator
    # would (the default's burst turned some discoveries' answers away).
    server += ["--rate-limit", "5000"]
    lab.spawn(
        inet,
        [sys.executable, "-c", twistd, "-n", "--pidfile=", "--logfile=/dev/null", *server],
        stdout=subprocess.DEVNULL,
    )
    ports = [OURS, OURS_ALTERNATE]
    if coturn is not None:
        argv = command_line(
            coturn,
            CoturnMode.RFC5780,
            workdir,
            COTURN,
            COTURN_ALTERNATE,
            None,
            False,
            None,
            primary_host=primary,
            alternate_host=alternate,
        )
        lab.spawn(inet, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ports += [COTURN, COTURN_ALTERNATE]
    for port in ports:
        ready = lab.run(inet, [sys.executable, "-c", _READY, primary, str(port)])
        if ready.returncode != 0:
            raise RuntimeError(f"STUN server on {primary}:{port} did not start: {ready.stderr}")


def start_turn(lab: Lab, workdir: str, port: int = TURN) -> str:
    """
    coturn as a TURN server (long-term credentials, L{TURN_CREDENTIALS})
    on the internet's third address, UDP and TCP port C{port}, relaying
    from that address too; returns its C{turn:} URI once it answers.
    """
    host = lab.internet.addresses[2]
    argv = command_line(
        require_tool("turnserver"),
        CoturnMode.TURN,
        workdir,
        port,
        None,
        None,
        True,
        TURN_CREDENTIALS,
        primary_host=host,
    )
    lab.spawn(lab.internet.namespace, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = lab.run(lab.internet.namespace, [sys.executable, "-c", _READY, host, str(port)])
    if ready.returncode != 0:
        raise RuntimeError(f"the TURN server on {host}:{port} did not start: {ready.stderr}")
    return f"turn:{host}:{port}?transport=udp"


def detect_from(lab: Lab, nat: Nat, port: int, runs: int, tool: str = "ours") -> list[Any]:
    """C{runs} detections (ours or pystun3's) from C{nat}'s first peer; one dict each."""
    server = f"{lab.internet.addresses[0]}:{port}"
    argv = [sys.executable, "-m", "tests.support.detect_runner", "--stun", server]
    result = lab.run(
        nat.peer.namespace, [*argv, "--runs", str(runs), "--tool", tool], timeout=60 + runs * 60
    )
    if result.returncode != 0:
        raise RuntimeError(f"detection failed in {nat.peer.namespace}: {result.stderr}")
    return [json.loads(line) for line in result.stdout.splitlines()]
