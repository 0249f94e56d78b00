"""
The services and the protocol that C{twistd nat} runs, apart from the peer
itself (a L{twisted_nat.service.NATTraversalService}).
"""

from __future__ import annotations

import sys
from typing import Any, cast

from twisted.application.service import MultiService, Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel

from twisted_nat.address import Address, format_address
from twisted_nat.connection import PeerConnection
from twisted_nat.stun.server import BindingServer, STUNServerGroup
from twisted_nat.stun.sourcelimit import SourceLimit
from twisted_nat.tap.logs import filter_twistd_log


class STUNServerService(Service):
    """
    Binds the server's sockets when started, in C{privilegedStartService}
    so that port 3478 works before twistd drops privileges.

    @param reactor: binds the sockets.
    @param primary: the server's address.
    @param alternate: the second address (other IP, other port) for RFC
        5780 behaviour discovery, or None to serve on C{primary} only.
    @param software: the SOFTWARE attribute of responses, or None.
    @param rate_limit: (rate, burst) of requests answered per source IP,
        shared by all the sockets; None for no limit.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorUDP,
        primary: Address,
        alternate: Address | None,
        software: str | None,
        rate_limit: tuple[float, float] | None = None,
    ) -> None:
        self._reactor = reactor
        self.rate_limit = rate_limit
        self.primary = primary
        self.alternate = alternate
        self.software = software
        self.ports: list[IListeningPort] = []
        self.group: STUNServerGroup | None = None
        self.server: BindingServer | None = None

    def privilegedStartService(self) -> None:
        limit = None
        if self.rate_limit is not None:
            rate, burst = self.rate_limit
            limit = SourceLimit(cast(IReactorTime, self._reactor), rate, burst)
        if self.alternate is None:
            self.server = BindingServer(self.software, limit=limit)
            host, port = self.primary
            self.ports = [
                self._reactor.listenUDP(port, self.server, interface=host, maxPacketSize=8192)
            ]
        else:
            self.group = STUNServerGroup(self.primary, self.alternate, self.software, limit)
            self.ports = self.group.listen(self._reactor)
        super().privilegedStartService()

    def startService(self) -> None:
        if not self.ports:
            self.privilegedStartService()
        super().startService()
        for port in self.ports:
            host = port.getHost()
            self.log.info(
                "STUN server listening on {address}",
                address=format_address((host.host, host.port)),  # type: ignore[attr-defined]
            )

    def stopService(self) -> Any:
        super().stopService()
        ports, self.ports = self.ports, []
        for port in ports:
            port.stopListening()


class ExitOnListenFailure(MultiService):
    """
    The top of C{twistd nat}'s tree: turns a port that cannot be bound into
    one line and exit status 1, and, given twistd's C{twistd_options},
    filters what twistd logs to C{log_level} (L{filter_twistd_log}) once it
    joins twistd's application.
    """

    def __init__(self, twistd_options: Any = None, log_level: LogLevel = LogLevel.info) -> None:
        super().__init__()
        self._twistd_options = twistd_options
        self._log_level = log_level

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        if self._twistd_options is not None:
            filter_twistd_log(parent, self._twistd_options, self._log_level)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            address = format_address((e.interface or "0.0.0.0", e.port))
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            # twistd has replaced sys.stderr with a log redirection by now;
            # the operator should see this on the real stderr.
            stream = sys.__stderr__ or sys.stderr
            stream.write(f"twisted-nat: cannot listen on {address}: {reason}\n")
            stream.flush()
            raise SystemExit(1) from None


class Greeter(DatagramProtocol):
    """
    What a C{twistd nat} peer does with a connection: log what arrives (and
    echo it, with C{--echo}), and greet the peer every few seconds.

    @param reactor: the clock of the greetings.
    @param echo: send every datagram back, prefixed with C{echo: }.
    @param every: seconds between greetings; 0 for none.
    """

    log = Logger()
    noisy = False

    def __init__(
        self, connection: PeerConnection, reactor: IReactorTime, echo: bool, every: float
    ) -> None:
        self.connection = connection
        self.echo = echo
        self._greeting = LoopingCall(self._greet)
        self._greeting.clock = reactor
        self._every = every
        self._count = 0

    def startProtocol(self) -> None:
        if self._every > 0:
            self._greeting.start(self._every, now=True)

    def stopProtocol(self) -> None:
        if self._greeting.running:
            self._greeting.stop()

    def _greet(self) -> None:
        self._count += 1
        self.connection.write(b"hello #%d" % self._count)

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        self.log.info(
            "{peer} says {text!r} (path {path})",
            peer=self.connection.peer,
            text=datagram[:60].decode("utf-8", "replace"),
            path=self.connection.describe_path(),
        )
        if self.echo and not datagram.startswith(b"echo: "):
            self.connection.write(b"echo: " + datagram)
