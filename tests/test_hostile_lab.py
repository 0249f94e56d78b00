"""
What a stranger's offers cost a peer behind a real NAT, counted at the
peer's own interface (nftables, in its namespace): the datagrams and bytes
it sent towards the addresses the offers named, and the sockets they left
from.  The stranger registers under fresh keys from the lab's internet and
sends validly signed offers naming 32 addresses nobody holds, with the NAT
hint that makes each peer work hardest (L{tests.support.hostile}).  The
simulated benchmark (C{python -m benchmarks.bench_hostile}) gives the same
figures exactly; this shows them on real sockets, kernels and NATs.

Held to the budgets of docs/security.md: one offer costs at most
C{PunchSettings.unanswered_budget} (100) datagrams from the shared socket
alone (the expensive techniques never run for addresses the rendezvous
did not see the peer at), and ten offers from ten keys at most ten times
that.  C{HOSTILE_LAB_REPORT=FILE} writes the figures as a markdown table.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import pytest

from tests.support.hostile import TARGETS
from tests.support.lab_fixtures import LabWorld, Peers, lab_fixtures
from tests.support.natlab import NatSpec, NatType
from twisted_nat.punch import PunchSettings

pytestmark = pytest.mark.lab

NATS = {
    "port-restricted cone": NatSpec("portrestr", NatType.PORT_RESTRICTED_CONE),
    "symmetric, sequential ports": NatSpec("sequential", NatType.SYMMETRIC_SEQUENTIAL),
    "symmetric, random ports": NatSpec("symmetric", NatType.SYMMETRIC),
}

world, peers = lab_fixtures(list(NATS.values()))

SETTINGS = PunchSettings()
SETTLE = SETTINGS.timeout + 3.0
"""Seconds after the offers by which every punch they started has given up."""

COUNTING = f"""
table inet hostile {{
    counter sent {{ }}
    set sources {{ type inet_service; flags dynamic; }}
    chain out {{
        type filter hook output priority 0; policy accept;
        ip daddr {TARGETS}0/24 meta l4proto udp add @sources {{ udp sport }} counter name "sent"
    }}
}}
"""
"""Counts what leaves a peer's namespace for the offers' addresses, and from which ports."""


def nft(world: LabWorld, namespace: str, *argv: str, script: str | None = None) -> str:
    command = ["nft", "-j", *argv] if script is None else ["nft", "-f", "-"]
    done = world.lab.run(namespace, command, input=script, check=True)
    return done.stdout


def counted(world: LabWorld, namespace: str) -> dict[str, int]:
    """Datagrams sent to the targets, their UDP payload bytes, and the ports they left from."""
    items = json.loads(nft(world, namespace, "list", "counter", "inet", "hostile", "sent"))
    counter = next(i["counter"] for i in items["nftables"] if "counter" in i)
    listed = json.loads(nft(world, namespace, "list", "set", "inet", "hostile", "sources"))
    found = next(i["set"] for i in listed["nftables"] if "set" in i)
    packets, size = counter["packets"], counter["bytes"]
    return {
        "datagrams": packets,
        "bytes": size - 28 * packets,
        "ports": len(found.get("elem", [])),
    }


def attack(world: LabWorld, victim: str, kind: str, offers: int, tag: str) -> dict[str, Any]:
    argv = [sys.executable, "-m", "tests.support.hostile_runner", "--rendezvous", world.rendezvous]
    argv += ["--to", victim, "--hint", kind, "--offers", str(offers), "--name", f"m{tag}"]
    done = world.lab.run(world.lab.internet.namespace, argv, timeout=60)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_a_strangers_offers_cost_a_peer_a_small_fixed_budget(world: LabWorld, peers: Peers):
    victims = {kind: f"victim{i}" for i, kind in enumerate(NATS)}
    started = {kind: peers.start(NATS[kind].name, victims[kind]) for kind in NATS}
    namespaces = {}
    for kind, peer in started.items():
        peer.wait_for("ready", timeout=30)
        namespace = world.lab.nat(NATS[kind].name).peers[0].namespace
        nft(world, namespace, script=COUNTING)
        namespaces[kind] = namespace
    rows = []
    budget = SETTINGS.unanswered_budget
    for offers in (1, 10):
        reports = {
            kind: attack(world, victims[kind], kind, offers, f"{offers}x{i}")
            for i, kind in enumerate(NATS)
        }
        time.sleep(SETTLE)
        for kind, namespace in namespaces.items():
            cost = counted(world, namespace)
            rows.append((kind, offers, cost, reports[kind]))
            nft(world, namespace, "reset", "counter", "inet", "hostile", "sent")
            nft(world, namespace, "flush", "set", "inet", "hostile", "sources")
    report = render(rows)
    print("\n" + report)
    target = os.environ.get("HOSTILE_LAB_REPORT")
    if target:
        with open(target, "w") as out:
            out.write(report)
    for kind, offers, cost, sent in rows:
        assert sent["answered"] >= 1, (kind, offers, sent)
        assert 0 < cost["datagrams"] <= budget * offers, (kind, offers, cost)
        # Nothing but the shared socket: no extra sockets for a stranger's claims.
        assert cost["ports"] == 1, (kind, offers, cost)


def render(rows: list[tuple[str, int, dict[str, int], dict[str, Any]]]) -> str:
    lines = [
        "| peer's NAT | offers | answered | datagrams | bytes (UDP payload) | source ports |",
        "|---|---|---|---|---|---|",
    ]
    for kind, offers, cost, sent in rows:
        lines.append(
            f"| {kind} | {offers} | {sent['answered']} | {cost['datagrams']:,} "
            f"| {cost['bytes']:,} | {cost['ports']} |"
        )
    return "\n".join(lines) + "\n"
