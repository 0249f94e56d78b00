"""
The processes of the IPv6 lab (tests/support/lab6.py), one per namespace:

    python -m tests.support.lab6_runner server ENDPOINT
    python -m tests.support.lab6_runner peer NAME RENDEZVOUS HOST4 HOST6 [PEER|-] [STUN6]
    python -m tests.support.lab6_runner stun PRIMARY6 ALTERNATE6

A server runs a rendezvous server, and stun an RFC 5780 STUN server on
two IPv6 addresses (ports 3478 and 3479).  A peer runs a service with both
sockets and the host candidates given (the lab has no NAT, hence no STUN),
prints one JSON line per event on stdout ("ready", "connected" with the
path's family, address and times, "received"), connects to PEER when given
and sends it one datagram over the connection (with STUN6, after IPv6
behaviour discovery, said as "nat6"), and one more on each new path (a
punch again after the path was lost).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from twisted.internet import reactor as global_reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.logger import globalLogBeginner, textFileLogObserver

from twisted_nat.connection import PeerConnection
from twisted_nat.punch import PunchResult
from twisted_nat.rendezvous import RendezvousService
from twisted_nat.service import NATTraversalService, PeerEventsBase
from twisted_nat.service.settings import KeepAliveSettings, PeerSettings
from twisted_nat.stun.server import STUNServerGroup

reactor: Any = global_reactor


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class Printer(DatagramProtocol):
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        say("received", data=datagram.decode("ascii", "replace"))


class Told(PeerEventsBase):
    def __init__(self, name: str) -> None:
        self.name = name

    def connected(
        self, connection: PeerConnection, result: PunchResult, offerer: bool, again: bool
    ) -> None:
        say(
            "connected",
            peer=connection.peer,
            family=result.base.family,
            remote=result.remote.host,
            elapsed=result.elapsed,
            rtt=result.rtt,
            offerer=offerer,
            pairs=[report.describe() for report in result.pairs],
            again=again,
        )
        if again and offerer:
            # The same connection on its new path: the application just writes on.
            connection.write(f"again from {self.name}".encode())


async def peer(
    name: str, rendezvous: str, host4: str, host6: str, other: str | None, stun6: str | None
) -> None:
    stun = [] if stun6 is None else [(stun6, 3478)]
    service = NATTraversalService(
        stun,
        reactor=reactor,
        name=name,
        rendezvous=rendezvous,
        protocol_factory=lambda connection: Printer(),
        settings=PeerSettings(
            host_addresses=[host4, host6],
            detect_behavior=stun6 is not None,
            keepalive=KeepAliveSettings(interval=2.0, timeout=1.0),
        ),
    )
    service.watch(Told(name))
    service.startService()
    await service.ready()
    assert service.signaling is not None
    await service.signaling.when_registered()
    say("ready", candidates=[c.as_json() for c in service.candidates])
    if stun6 is not None:
        for _ in range(100):
            if service.nat6.behavior is not None:
                break
            await deferLater(reactor, 0.2, lambda: None)
        behavior = service.nat6.behavior
        say("nat6", nat=None if behavior is None else behavior.as_json())
    if other is not None:
        connection = await service.connect(other)
        connection.write(f"hello from {name}".encode())


def main(argv: list[str]) -> None:
    # The services' story on stderr, which the test shows when it fails.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    if argv[0] == "server":
        RendezvousService(reactor, argv[1]).startService()
        say("ready")
    elif argv[0] == "stun":
        STUNServerGroup((argv[1], 3478), (argv[2], 3479)).listen(reactor)
        say("ready")
    else:
        name, rendezvous, host4, host6, *rest = argv[1:]
        other, stun6 = [*rest, None, None][:2]
        other = None if other == "-" else other
        running = ensureDeferred(peer(name, rendezvous, host4, host6, other, stun6))
        running.addErrback(lambda failure: say("failed", error=str(failure.value)))
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
