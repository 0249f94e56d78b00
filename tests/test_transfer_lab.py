"""
C{twisted-nat send} and C{twisted-nat receive} across real NATs: 64 MiB
from a peer behind a symmetric NAT with random ports to a peer behind a
port-restricted cone (the birthday method's pair), with a TURN server
beside them should no direct path be found.  The machine is shared, so
only correctness is asserted: both commands succeed and the SHA-256 of
what arrived is the SHA-256 of what was sent; the path and the time are
printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.lab_fixtures import LabWorld, lab_fixtures
from tests.support.lab_servers import TURN_CREDENTIALS
from tests.support.natlab import NatSpec, NatType

pytestmark = pytest.mark.lab

NATS = [
    NatSpec("portrestr", NatType.PORT_RESTRICTED_CONE),
    NatSpec("symmetric", NatType.SYMMETRIC),
]
CLI = "from twisted_nat.cli import main; main()"
SIZE = 64 << 20
TIMEOUT = 300.0

world, peers = lab_fixtures(NATS, turn=True)


def options(world: LabWorld, home: Path, name: str) -> list[str]:
    assert world.turn is not None
    return [
        *("--rendezvous", world.rendezvous, "--stun", world.stun, "--timeout", "60"),
        *("--turn", world.turn, "--turn-user", TURN_CREDENTIALS.username),
        *("--turn-password", TURN_CREDENTIALS.password),
        *("--key", str(home / f"{name}.key"), "--known-peers", str(home / f"{name}.known")),
    ]


def lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def events(lines: queue.Queue[str], until: str, timeout: float) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        if not line:
            raise AssertionError(f"ended before {until}: {seen}")
        seen.append(json.loads(line))
        if seen[-1]["event"] == until:
            return seen


def test_64_mib_from_a_random_symmetric_nat_to_a_port_restricted_cone(world, tmp_path):
    lab = world.lab
    source = tmp_path / "payload.bin"
    with source.open("wb") as f:
        for _ in range(SIZE >> 20):
            f.write(os.urandom(1 << 20))
    output = tmp_path / "output"
    output.mkdir()
    receiving = lab.spawn(
        lab.nat("portrestr").peers[0].namespace,
        [
            *(sys.executable, "-c", CLI, "receive", "--name", "bob", "--output", str(output)),
            *("--yes", "--json", *options(world, tmp_path, "bob")),
        ],
        stderr=subprocess.PIPE,
    )
    try:
        lines = lines_of(receiving)
        events(lines, "waiting", 60)
        started = time.monotonic()
        sending = lab.run(
            lab.nat("symmetric").peers[0].namespace,
            [
                *(sys.executable, "-c", CLI, "send", str(source), "--to", "bob", "--json"),
                *options(world, tmp_path, "alice"),
            ],
            timeout=TIMEOUT,
        )
        seconds = time.monotonic() - started
        assert sending.returncode == 0, sending.stderr
        received = events(lines, "done", 60)
        assert receiving.wait(timeout=60) == 0
    finally:
        if receiving.poll() is None:
            receiving.kill()
            receiving.wait()
    [done] = [event for event in received if event["event"] == "done"]
    assert done["ok"] and done["bytes"] == SIZE
    assert hashlib.sha256((output / "payload.bin").read_bytes()).hexdigest() == (
        hashlib.sha256(source.read_bytes()).hexdigest()
    )
    sent = [json.loads(line) for line in sending.stdout.splitlines()]
    [connected] = [event for event in sent if event["event"] == "connected"]
    print(
        f"\n64 MiB symmetric (random) -> port-restricted: {seconds:.1f} s for the sender's "
        f"whole run, path {done['path']} ({connected['path']}), "
        f"{done['path_changes']} path changes, receiver's data phase {done['seconds']:.1f} s"
    )
