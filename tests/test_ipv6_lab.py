"""
Dual stack on real sockets between two stateful firewalls (tests/support/lab6.py):
the firewalls drop what nobody inside asked for, a direct IPv6 path forms
by simultaneous sends, and with IPv6 blocked by one firewall IPv4 is taken
after the wait for IPv6, without the application seeing anything else.
Timings on this shared machine are loaded: the bounds are generous, and
the figures go to benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.lab6 import PEERS, ROUTERS, Lab6, ipv6_lab
from tests.support.natlab import require_lab
from twisted_nat.punch.preference import DEFAULT_PREFERENCE

pytestmark = pytest.mark.lab

RUNNER = [sys.executable, "-m", "tests.support.lab6_runner"]
WAIT = 60.0
"""Seconds a process may take to say what it is expected to, on a loaded machine."""


@pytest.fixture
def lab() -> Iterator[Lab6]:
    require_lab()
    with ipv6_lab() as built:
        yield built


_PENDING: dict[int, bytes] = {}
"""What each process wrote past its last whole line, by pid."""


def events(process: subprocess.Popen[str], until: str, deadline: float) -> list[dict[str, Any]]:
    """
    The JSON lines of C{process} up to the first of event C{until}.  Read
    from the descriptor itself: a buffered reader would keep a second line
    that came with the first where C{select} cannot see it.
    """
    assert process.stdout is not None
    fd = process.stdout.fileno()
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        pending = _PENDING.get(process.pid, b"")
        if b"\n" not in pending:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            _PENDING[process.pid] = pending + chunk
            continue
        line, _PENDING[process.pid] = pending.split(b"\n", 1)
        event = json.loads(line)
        seen.append(event)
        if event["event"] in (until, "failed"):
            return seen
    raise AssertionError(f"no {until!r} from the process; saw {seen}")


def connect(lab: Lab6) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
    """b waits, a connects: a's connected event, b's, and what b received."""
    deadline = time.monotonic() + WAIT
    server = lab.spawn("fwa", [*RUNNER, "server", lab.rendezvous_server])
    events(server, "ready", deadline)
    _, b4, b6, _, _ = PEERS["b"]
    _, a4, a6, _, _ = PEERS["a"]
    bob = lab.spawn("b", [*RUNNER, "peer", "b", lab.rendezvous, b4, b6])
    events(bob, "ready", deadline)
    alice = lab.spawn("a", [*RUNNER, "peer", "a", lab.rendezvous, a4, a6, "b"])
    *_, alices = events(alice, "connected", deadline)
    assert alices["event"] == "connected", alices
    *_, bobs = events(bob, "connected", deadline)
    received = [e for e in events(bob, "received", deadline) if e["event"] == "received"]
    return alices, bobs, received


def unsolicited_reaches(lab: Lab6, family: int) -> bool:
    """Whether a datagram from a to a port of b that never sent gets through b's firewall."""
    _, b4, b6, _, _ = PEERS["b"]
    host = b6 if family == 6 else b4
    af = "AF_INET6" if family == 6 else "AF_INET"
    listener = lab.spawn(
        "b",
        [
            sys.executable,
            "-c",
            "import socket,sys\n"
            f"s=socket.socket(socket.{af},socket.SOCK_DGRAM);s.bind(({host!r},9999))\n"
            "print('ready',flush=True);s.settimeout(2)\n"
            "try:\n s.recvfrom(100);print('got')\nexcept OSError:\n print('nothing')\n",
        ],
    )
    assert listener.stdout is not None
    assert listener.stdout.readline().strip() == "ready"
    sender = (
        f"import socket,time\ns=socket.socket(socket.{af},socket.SOCK_DGRAM)\n"
        f"for _ in range(5):\n s.sendto(b'x',({host!r},9999));time.sleep(0.1)\n"
    )
    lab.run("a", [sys.executable, "-c", sender])
    return listener.stdout.readline().strip() == "got"


def test_the_firewalls_drop_what_nobody_asked_for(lab: Lab6) -> None:
    assert not unsolicited_reaches(lab, 6)
    assert not unsolicited_reaches(lab, 4)
    lab.run("fwb", ["nft", "delete table inet lab6"])
    assert unsolicited_reaches(lab, 6), "the routes work: it was the firewall"
    assert unsolicited_reaches(lab, 4)


def test_a_direct_ipv6_path_forms_through_both_firewalls(lab: Lab6) -> None:
    """IPv4 blocked on the way: only simultaneous IPv6 sends can open the firewalls."""
    lab.block("fwa", 4)
    alices, bobs, received = connect(lab)
    assert (alices["family"], alices["remote"]) == (6, PEERS["b"][2])
    assert (bobs["family"], bobs["remote"]) == (6, PEERS["a"][2])
    assert [e["data"] for e in received] == ["hello from a"]
    print(f"IPv6 through two firewalls: {alices['elapsed'] * 1000:.0f} ms (load: shared machine)")


def test_with_ipv6_blocked_by_one_firewall_ipv4_wins(lab: Lab6) -> None:
    lab.block("fwb", 6)
    alices, bobs, received = connect(lab)
    assert alices["family"] == 4 and bobs["family"] == 4
    assert [e["data"] for e in received] == ["hello from a"]
    # The wait for IPv6 plus a round trip, and a generous allowance for a loaded machine.
    assert alices["elapsed"] < DEFAULT_PREFERENCE.wait + alices["rtt"] + 2.0, alices
    assert alices["elapsed"] >= DEFAULT_PREFERENCE.wait, "IPv6 had its chance"
    elapsed, rtt = alices["elapsed"] * 1000, alices["rtt"] * 1000
    print(f"IPv4 after IPv6 blocked: {elapsed:.0f} ms, rtt {rtt:.1f} ms")


def test_both_open_both_connect(lab: Lab6) -> None:
    """Both families work; which one is taken depends on the RTTs measured (recorded)."""
    alices, bobs, received = connect(lab)
    assert alices["family"] == bobs["family"]
    assert [e["data"] for e in received] == ["hello from a"]
    print(f"both open: IPv{alices['family']} in {alices['elapsed'] * 1000:.0f} ms")


def test_a_dead_ipv6_path_falls_back_to_ipv4(lab: Lab6) -> None:
    """
    Connected over IPv6, then one firewall blocks IPv6: keep-alive finds
    the path lost, the offerer punches again, and the same connection goes
    on over IPv4; the application sees a path change and nothing else.
    """
    alices, bobs, received = connect(lab)
    assert alices["family"] == 6, "both open: IPv6 first"
    lab.block("fwb", 6)
    lost = time.monotonic()
    deadline = lost + WAIT
    [alice, bob] = lab.processes[-1], lab.processes[-2]
    *_, again = events(alice, "connected", deadline)
    assert again["event"] == "connected" and again["again"], again
    assert again["family"] == 4
    arrived = [e["data"] for e in events(bob, "received", deadline) if e["event"] == "received"]
    assert arrived == ["again from a"], "the connection carries data on its new path"
    print(f"IPv6 lost, on IPv4 again after {time.monotonic() - lost:.1f} s (keep-alive 2 s)")


@pytest.mark.parametrize(
    ("firewall", "nat_type"), [(True, "no NAT, firewalled"), (False, "open internet")]
)
def test_ipv6_behaviour_discovery(lab: Lab6, firewall: bool, nat_type: str) -> None:
    """RFC 5780 over IPv6, against our server beyond a's firewall (on fwb, two addresses)."""
    if not firewall:
        lab.run("fwa", ["nft", "delete table inet lab6"])
    deadline = time.monotonic() + WAIT
    lab.add_address("fwb", "2001:db8:c::12")
    stun = lab.spawn("fwb", [*RUNNER, "stun", "2001:db8:c::2", "2001:db8:c::12"])
    events(stun, "ready", deadline)
    server = lab.spawn("fwa", [*RUNNER, "server", lab.rendezvous_server])
    events(server, "ready", deadline)
    _, a4, a6, _, _ = PEERS["a"]
    alice = lab.spawn("a", [*RUNNER, "peer", "a", lab.rendezvous, a4, a6, "-", "2001:db8:c::2"])
    *_, found = events(alice, "nat6", deadline)
    assert found["event"] == "nat6", found
    nat = found["nat"]
    assert nat is not None, "discovery over IPv6 ended"
    assert nat["nat_type"] == nat_type, nat
    assert nat["public"] == nat["local"], "no NAT66 on the way"


def test_behind_a_nat66_the_ipv6_public_address_comes_from_stun(lab: Lab6) -> None:
    """
    fwa masquerades a's IPv6: discovery over IPv6 sees a NAT, a offers
    the server-reflexive IPv6 address our STUN server saw, and a direct
    IPv6 path still forms (IPv4 blocked on the way).
    """
    deadline = time.monotonic() + WAIT
    lab.nat66("fwa")
    lab.block("fwa", 4)
    lab.add_address("fwb", "2001:db8:c::12")
    stun = lab.spawn("fwb", [*RUNNER, "stun", "2001:db8:c::2", "2001:db8:c::12"])
    events(stun, "ready", deadline)
    server = lab.spawn("fwa", [*RUNNER, "server", lab.rendezvous_server])
    events(server, "ready", deadline)
    _, b4, b6, _, _ = PEERS["b"]
    _, a4, a6, _, _ = PEERS["a"]
    bob = lab.spawn("b", [*RUNNER, "peer", "b", lab.rendezvous, b4, b6])
    events(bob, "ready", deadline)
    alice = lab.spawn("a", [*RUNNER, "peer", "a", lab.rendezvous, a4, a6, "b", "2001:db8:c::2"])
    seen = events(alice, "nat6", deadline)
    [ready] = [e for e in seen if e["event"] == "ready"]
    [srflx] = [c for c in ready["candidates"] if c["type"] == "srflx"]
    assert srflx["host"] == ROUTERS["fwa"][1], "the NAT66's outside address"
    nat = seen[-1]["nat"]
    assert nat is not None and nat["nat_present"] is True, nat
    assert nat["nat_type"] == "port-restricted cone", nat
    *_, alices = events(alice, "connected", deadline)
    assert alices["event"] == "connected" and alices["family"] == 6, alices
    *_, bobs = events(bob, "connected", deadline)
    assert bobs["family"] == 6 and bobs["remote"] == ROUTERS["fwa"][1], bobs
