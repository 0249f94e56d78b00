"""
A port mapper on the real reactor inside a lab peer's namespace, for the
port mapping lab tests: it binds a UDP socket, keeps it mapped on the
default gateway with L{PortMapper}, and reports as JSON lines on stdout.

    python -m tests.support.portmap_runner --mode pcp [--lifetime S] [--port P]

Events: C{changed} (C{old}, C{new}: the mapping as in C{--status}),
C{received} (a datagram on the socket: C{data}, C{source}), C{status} (the
mapper's status), C{stopped} (the mapping deleted).  Commands on stdin:
C{status}, C{stop} (delete the mapping), C{quit}.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from twisted.internet import reactor, stdio
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.protocols.basic import LineReceiver

from twisted_nat.limits import DropLog
from twisted_nat.portmap import Mapping, Mode, PortMapper, gateway_clients


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class Socket(DatagramProtocol):
    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        emit("received", data=datagram.decode("ascii", "replace"), source=list(addr))
        self.transport.write(b"echo " + datagram, addr)


class Commands(LineReceiver):
    delimiter = b"\n"

    def __init__(self, mapper: PortMapper) -> None:
        self.mapper = mapper

    def lineReceived(self, line: bytes) -> None:
        command = line.decode().strip()
        if command == "status":
            emit("status", **self.mapper.status())
        elif command == "stop":
            self.mapper.stop().addCallback(lambda _: emit("stopped", **self.mapper.status()))
        elif command == "quit":
            reactor.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--lifetime", type=int, default=3600)
    parser.add_argument("--port", type=int, default=0)
    options = parser.parse_args()
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    port = reactor.listenUDP(options.port, Socket())  # type: ignore[attr-defined]

    def changed(old: Mapping | None, new: Mapping | None) -> None:
        now = reactor.seconds()
        emit(
            "changed",
            old=None if old is None else old.as_json(now),
            new=None if new is None else new.as_json(now),
        )

    drops = DropLog(PortMapper.log, reactor)
    clients = gateway_clients(reactor, drops)
    mapper = PortMapper(
        reactor,
        Mode(options.mode),
        clients,
        port.getHost().port,
        changed,
        options.lifetime,
    )
    stdio.StandardIO(Commands(mapper))
    mapper.start()
    emit("ready", port=port.getHost().port)
    reactor.run()


if __name__ == "__main__":
    main()
