"""
C{twistd nat}: options and service construction for the twistd plugin.

    twistd -n nat server [--address A] [--port P]
                         [--alternate-address A2] [--alternate-port P2] [--single]

A bad setting ends with one line on stderr and exit status 1, and so does a socket
that cannot be bound ends the process with one line on stderr and exit
status 1, never a traceback.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorUDP
from twisted.logger import Logger
from twisted.python import usage

from twisted_nat.address import format_address, parse_ip, parse_port
from twisted_nat.errors import ConfigurationError
from twisted_nat.stun.server import BindingServer, STUNServerGroup

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_ALTERNATE_ADDRESS = "127.0.0.2"
DEFAULT_PORT = 3478
DEFAULT_ALTERNATE_PORT = 3479


class ServerOptions(usage.Options):
    """Options of C{twistd nat server}."""

    synopsis = "[options]"
    longdesc = (
        "Run a STUN server (RFC 8489). By default it serves RFC 5780 NAT behaviour "
        "discovery on four sockets: two addresses times two ports. With --single it "
        "answers on one socket only."
    )
    optFlags = [
        ["single", "s", "Serve plain STUN on one socket (no RFC 5780 discovery)."],
    ]
    optParameters = [
        ["address", "a", DEFAULT_ADDRESS, "Primary IP address to listen on."],
        ["port", "p", str(DEFAULT_PORT), "Primary UDP port."],
        [
            "alternate-address",
            "A",
            DEFAULT_ALTERNATE_ADDRESS,
            "Second IP address (RFC 5780 mode).",
        ],
        ["alternate-port", "P", str(DEFAULT_ALTERNATE_PORT), "Second UDP port (RFC 5780 mode)."],
        ["software", None, "twisted-nat", "SOFTWARE attribute value; empty for none."],
    ]

    def postOptions(self) -> None:
        try:
            self["address"] = parse_ip(self["address"])
            self["port"] = parse_port(self["port"])
            self["alternate-address"] = parse_ip(self["alternate-address"])
            self["alternate-port"] = parse_port(self["alternate-port"])
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None
        if not self["single"]:
            if self["address"] == self["alternate-address"]:
                raise usage.UsageError("RFC 5780 mode needs two different addresses (or --single)")
            if self["port"] == self["alternate-port"]:
                raise usage.UsageError("RFC 5780 mode needs two different ports (or --single)")


class Options(usage.Options):
    """Options of C{twistd nat}."""

    synopsis = "<command> [options]"
    longdesc = "NAT traversal for Twisted. Commands: server (a STUN server)."
    subCommands = [
        ["server", None, ServerOptions, "Run a STUN server (RFC 5780 by default)."],
    ]
    defaultSubCommand = "server"

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Report a bad setting as one line and exit status 1, instead of
        twistd's habit of printing its whole usage text first.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"twistd nat: {e}") from None


class STUNServerService(Service):
    """
    Binds the server's sockets when started, in C{privilegedStartService}
    so that port 3478 works before twistd drops privileges.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorUDP,
        primary: tuple[str, int],
        alternate: tuple[str, int] | None,
        software: str | None,
    ) -> None:
        self._reactor = reactor
        self.primary = primary
        self.alternate = alternate
        self.software = software
        self.ports: list[IListeningPort] = []
        self.group: STUNServerGroup | None = None
        self.server: BindingServer | None = None

    def privilegedStartService(self) -> None:
        if self.alternate is None:
            self.server = BindingServer(self.software)
            host, port = self.primary
            self.ports = [
                self._reactor.listenUDP(port, self.server, interface=host, maxPacketSize=8192)
            ]
        else:
            self.group = STUNServerGroup(self.primary, self.alternate, self.software)
            self.ports = self.group.listen(self._reactor)
        super().privilegedStartService()

    def startService(self) -> None:
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


class _ExitOnListenFailure(MultiService):
    """Turns a port that cannot be bound into one line and exit status 1."""

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            address = format_address((e.interface or "0.0.0.0", e.port))
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            # twistd has replaced sys.stderr with a log redirection by now;
            # the operator should see this on the real stderr.
            stream = sys.__stderr__ or sys.stderr
            stream.write(f"twisted-nat: cannot listen on UDP {address}: {reason}\n")
            stream.flush()
            raise SystemExit(1) from None


def makeService(config: Options, reactor: Any = None) -> IService:
    """Build the service tree for C{twistd nat}."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    sub = config.subOptions if config.subCommand else ServerOptions()
    if config.subCommand is None:
        sub.parseOptions([])
    top = _ExitOnListenFailure()
    alternate = None if sub["single"] else (sub["alternate-address"], sub["alternate-port"])
    STUNServerService(
        reactor, (sub["address"], sub["port"]), alternate, sub["software"] or None
    ).setServiceParent(top)
    return top
