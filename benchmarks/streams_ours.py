"""
Our side of the stream benchmark: one twisted-nat peer on the real reactor,
sending or receiving one stream, in a process of its own.

    python -m benchmarks.streams_ours receive --name bob --rendezvous EP
        [--interface ADDRESS] [--stun HOST:PORT]
        [--turn URI --turn-user U --turn-password P --relay-only]
        prints {"event": "ready"} once registered, then a
        {"event": "received", ...} line per stream received to its end
    python -m benchmarks.streams_ours send --name alice --to bob --mib N
        --rendezvous EP [the same TURN options]
        connects, sends N MiB on one stream through a push producer, ends
        it, waits for the receiver's one-byte reply and prints
        {"event": "sent", ..., "relayed": bool}

Each process times its own part and measures its own CPU (user + system,
C{getrusage}) over it, as L{benchmarks.streams_aioquic} does.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from twisted_nat.address import parse_hostport
from twisted_nat.errors import PeerUnavailable, RendezvousUnavailable, UnknownPeer
from twisted_nat.service import NATTraversalService, PeerSettings
from twisted_nat.turn import TURNServer, parse_turn_uri

MIB = 1 << 20
CHUNK = 1 << 16
"""What the producer writes at a time."""


def cpu() -> float:
    """User and system seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


@implementer(IHalfCloseableProtocol)
class Sink(Protocol):
    """Counts a stream's bytes; at its end, answers one byte and reports."""

    def connectionMade(self) -> None:
        self.received = 0
        self.started = (time.perf_counter(), cpu())

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def readConnectionLost(self) -> None:
        self.transport.write(b"k")
        self.transport.loseWriteConnection()
        wall, used = self.started
        emit("received", bytes=self.received, seconds=time.perf_counter() - wall, cpu=cpu() - used)

    def writeConnectionLost(self) -> None:
        pass


@implementer(IHalfCloseableProtocol, IPushProducer)
class Source(Protocol):
    """Writes its bytes while the stream lets it, then waits for the reply."""

    def __init__(self, size: int) -> None:
        self.left = size
        self.size = size
        self.paused = False
        self.replied: Deferred[tuple[float, float]] = Deferred()
        self._chunk = bytes(range(256)) * (CHUNK // 256)

    def connectionMade(self) -> None:
        self.started = (time.perf_counter(), cpu())
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left > 0:
            self.left -= CHUNK
            self.transport.write(self._chunk)
        if self.left <= 0 and self.transport.producer is not None:
            self.transport.unregisterProducer()
            self.transport.loseWriteConnection()

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True

    def dataReceived(self, data: bytes) -> None:
        pass

    def readConnectionLost(self) -> None:
        wall, used = self.started
        if not self.replied.called:
            self.replied.callback((time.perf_counter() - wall, cpu() - used))

    def writeConnectionLost(self) -> None:
        pass


def service_for(reactor: Any, options: Any, streams: Factory | None) -> NATTraversalService:
    turn: tuple[TURNServer, ...] = ()
    if options.turn:
        turn = (parse_turn_uri(options.turn, options.turn_user, options.turn_password),)
    return NATTraversalService(
        [parse_hostport(options.stun)] if options.stun else [],
        reactor=reactor,
        name=options.name,
        rendezvous=options.rendezvous,
        stream_factory=streams,
        settings=PeerSettings(
            interface=options.interface,
            detect_behavior=False,
            relay_only=options.relay_only,
            turn_servers=turn,
        ),
    )


async def receive(reactor: Any, options: Any) -> None:
    service = service_for(reactor, options, Factory.forProtocol(Sink))
    service.startService()
    await service.ready()
    emit("ready")
    await Deferred()


async def send(reactor: Any, options: Any) -> None:
    service = service_for(reactor, options, None)
    service.startService()
    await service.ready()
    for _ in range(200):
        try:
            connection = await service.connect(options.to)
            break
        except (UnknownPeer, PeerUnavailable, RendezvousUnavailable):
            await task.deferLater(reactor, 0.05)
    else:
        raise RuntimeError(f"{options.to} never registered")
    source = Source(options.mib * MIB)
    await connection.open_stream(source)
    seconds, used = await source.replied
    emit("sent", bytes=source.size, seconds=seconds, cpu=used, relayed=connection.relayed)
    await service.stopService()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["send", "receive"])
    parser.add_argument("--name", required=True)
    parser.add_argument("--rendezvous", required=True)
    parser.add_argument("--to")
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--stun", help="HOST:PORT of a STUN server (none on loopback)")
    parser.add_argument("--turn", help="a turn: URI")
    parser.add_argument("--turn-user", default="")
    parser.add_argument("--turn-password", default="")
    parser.add_argument("--relay-only", action="store_true")
    options = parser.parse_args(argv)
    run = send if options.role == "send" else receive
    task.react(lambda reactor: Deferred.fromCoroutine(run(reactor, options)))


if __name__ == "__main__":
    main()
