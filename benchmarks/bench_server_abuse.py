"""
What one hostile client can make the rendezvous server hold.

Run with C{python -m benchmarks.bench_server_abuse [--json PATH]}.  Each
attempt drives one L{RendezvousServerFactory} (in-memory registry, a
C{Clock}, the default limits) through C{StringTransport}s, box by box, and
reports the Python memory the server holds afterwards (C{tracemalloc},
current size after C{gc} less the size before), and what it kept:

 1. one connection sends a box that never ends: distinct keys, 64 KB values;
 2. one registered peer sends offers (32 candidates each) to a registered
    peer that never answers;
 3. connections from one address, each registering a name with a key of
    its own, and how many are still held a minute later;
 4. malformed boxes (a non-ASCII command name, boxes that are no request)
    on one connection: bytes logged per byte received, and exceptions that
    would reach the reactor (which logs each as an "Unhandled Error").

No sockets: the kernel's buffers and descriptors are not counted, only
what the server's own objects hold.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tracemalloc
from collections.abc import Callable
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogBeginner
from zope.interface import implementer

from tests.support.amp_wire import WireClient, box
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.rendezvous.server import RendezvousServerFactory
from twisted_nat.trust import Identity
from twisted_nat.trust.handshake import Offering

MIB = 1024 * 1024


@implementer(ILogObserver)
class LogVolume:
    """Counts the log events and the bytes of their text, as a log file would hold them."""

    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0

    def __call__(self, event: dict[str, Any]) -> None:
        self.events += 1
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += failure.getTraceback()
        self.bytes += len(text.encode("utf-8", "replace")) + 1


LOG = LogVolume()


def held(attack: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run C{attack}; what it reports, with the memory held afterwards (MiB)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    report = attack()
    gc.collect()
    after, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    report["held_mib"] = round((after - before) / MIB, 2)
    report["peak_mib"] = round((peak - before) / MIB, 2)
    return report


def endless_box(values: int) -> dict[str, Any]:
    factory = RendezvousServerFactory(Clock())
    client = WireClient(factory)
    chunk = b"v" * 65535
    sent = 0
    for n in range(values):
        if not client.open:
            break
        key = b"k%d" % n
        client.protocol.dataReceived(
            len(key).to_bytes(2, "big") + key + len(chunk).to_bytes(2, "big") + chunk
        )
        sent += 2 + len(key) + 2 + len(chunk)
    report = {"bytes_sent": sent, "connection_open": client.open, "factory": factory}
    return report


def candidates() -> tuple[Candidate, ...]:
    return tuple(
        Candidate(CandidateType.HOST, f"2001:db8::{i + 1:x}", 40000 + i) for i in range(32)
    )


def pending_offers(count: int) -> dict[str, Any]:
    factory = RendezvousServerFactory(Clock())
    mute_key, sender_key = Identity.generate(), Identity.generate()
    mute = WireClient(factory, "10.0.0.2")
    mute.register("mute", mute_key)
    sender = WireClient(factory, "10.0.0.3")
    sender.register("sender", sender_key)
    ours = candidates()
    refused = 0
    for _ in range(count):
        offer = Offering(sender_key, "sender", ours, None, "mute").offer
        tag = sender.send(b"Connect", offer=json.dumps(offer.as_json()).encode())
        answer = sender.answer(tag)
        if answer is not None and b"_error" in answer:
            refused += 1
    delivered = len(mute.boxes_from_server())
    return {"offers_sent": count, "delivered": delivered, "refused": refused, "factory": factory}


def many_connections(count: int, wait: float) -> dict[str, Any]:
    clock = Clock()
    factory = RendezvousServerFactory(clock)
    registered = 0
    clients = []
    for n in range(count):
        client = WireClient(factory, "10.0.0.4")
        if client.open and b"_error" not in client.register(f"n{n}", Identity.generate()):
            registered += 1
        clients.append(client)
        if not client.open:  # refused: its socket would be closed now
            client.lose()
    clock.advance(wait)
    for client in clients:
        if not client.open:
            client.lose()
    clients = [client for client in clients if client.open]
    return {
        "connections": count,
        "registered": registered,
        f"held_open_after_{wait:g}_s": len(clients),
        "factory": factory,
        "clients": clients,
    }


def malformed(boxes: int) -> dict[str, Any]:
    factory = RendezvousServerFactory(Clock())
    client = WireClient(factory)
    escaped = 0
    received = 0
    events, logged = LOG.events, LOG.bytes
    bad = [box(_command=b"\xff\xfe", _ask=b"1"), box(noise=b"x" * 40), box(_answer=b"ffff")]
    for n in range(boxes):
        data = bad[n % len(bad)]
        received += len(data)
        try:
            client.protocol.dataReceived(data)
        except Exception:
            escaped += 1
    return {
        "boxes": boxes,
        "bytes_received": received,
        "escaped_to_reactor": escaped,
        "log_events": LOG.events - events,
        "log_bytes_per_byte_received": round((LOG.bytes - logged) / received, 2),
        "factory": factory,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    globalLogBeginner.beginLoggingTo([LOG], redirectStandardIO=False)
    attacks = {
        "endless_box": lambda: endless_box(args.values),
        "pending_offers": lambda: pending_offers(args.offers),
        "connections_one_address": lambda: many_connections(args.connections, args.wait),
        "malformed_boxes": lambda: malformed(args.boxes),
    }
    report: dict[str, Any] = {}
    for name, attack in attacks.items():
        result = held(attack)
        for kept in ("factory", "clients"):
            result.pop(kept, None)
        report[name] = result
        print(name, json.dumps(result), flush=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--json", metavar="PATH", help="also write the JSON report to PATH")
    parser.add_argument("--values", type=int, default=3200, help="64 KB values in the box")
    parser.add_argument("--offers", type=int, default=5000, help="offers to the mute peer")
    parser.add_argument("--connections", type=int, default=5000, help="connections, one address")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds, then count")
    parser.add_argument("--boxes", type=int, default=3000, help="malformed boxes")
    args = parser.parse_args(argv)
    text = json.dumps(run(args), indent=2)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
