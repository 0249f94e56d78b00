"""
A stranger for the lab: it registers at the rendezvous under fresh keys and
sends a peer validly signed offers naming addresses nobody holds, with the
NAT hint that makes the peer work hardest (L{tests.support.hostile}), then
prints one JSON line and exits.  What the offers cost the peer is counted
by the test, at the peer's own interface.

    python -m tests.support.hostile_runner --rendezvous ENDPOINT --to NAME \\
        --hint VICTIM --offers N
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.internet.task import react

from tests.support.hostile import TARGETS, VICTIMS
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.rendezvous import RendezvousClient
from twisted_nat.trust.handshake import Offering
from twisted_nat.trust.keys import Identity

CANDIDATES = 32
"""Addresses each offer names: as many as an offer may hold."""


def offering(identity: Identity, name: str, to: str, victim: str) -> Offering:
    """An offer from C{identity} to C{to} naming L{CANDIDATES} addresses nobody holds."""
    candidates = [
        Candidate(CandidateType.SERVER_REFLEXIVE, f"{TARGETS}{i + 1}", 40000 + i)
        for i in range(CANDIDATES)
    ]
    return Offering(identity, name, candidates, VICTIMS[victim][2], to)


async def attack(reactor: Any, options: argparse.Namespace) -> dict[str, Any]:
    """Each offer from a key of its own (keys cost nothing), all at once."""
    clients = [
        RendezvousClient(reactor, options.rendezvous, f"{options.name}-{i}", Identity.generate())
        for i in range(options.offers)
    ]
    for client in clients:
        client.startService()
    try:
        await DeferredList([c.when_registered() for c in clients], fireOnOneErrback=True)
        sent = [
            client.connect(
                offering(client.identity, client.peer_name, options.to, options.hint).offer
            )
            for client in clients
        ]
        results = await DeferredList(sent, consumeErrors=True)
    finally:
        await DeferredList([c.stopService() for c in clients])
    answered = sum(1 for ok, _ in results if ok)
    failures: list[Any] = [r for ok, r in results if not ok]
    refused = sorted({type(f.value).__name__ for f in failures})
    return {"event": "done", "offers": options.offers, "answered": answered, "refused": refused}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rendezvous", required=True, help="client endpoint string")
    parser.add_argument("--to", required=True, help="the victim's name")
    parser.add_argument("--hint", required=True, choices=sorted(VICTIMS), help="the victim's NAT")
    parser.add_argument("--offers", type=int, default=1)
    parser.add_argument("--name", default="mallory", help="names registered: NAME-0, NAME-1...")
    options = parser.parse_args(argv)

    async def run(reactor: Any) -> None:
        report = await attack(reactor, options)
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()

    react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
