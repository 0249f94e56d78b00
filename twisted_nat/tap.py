"""
C{twistd nat}: options and service construction for the twistd plugin.

    twistd -n nat                       a whole demonstration on loopback: an
                                        RFC 5780 STUN server, a rendezvous
                                        server, and two peers that connect
    twistd -n nat server [options]      STUN server (+ rendezvous server)
    twistd -n nat peer --name NAME --rendezvous ENDPOINT [--stun HOST:PORT ...]
                       [--connect PEER ...] [--status ENDPOINT]
                       [--turn URI ... --turn-user NAME [--turn-password PASSWORD]]
                       [--birthday-sockets N] [--birthday-probes N]
                       [--birthday-rate R] [--meeting-sockets N]

A bad setting, or a socket that cannot be bound, ends the process with one
line on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python import usage

from twisted_nat.address import format_address, parse_hostport, parse_ip, parse_port
from twisted_nat.connection import PeerConnection
from twisted_nat.errors import ConfigurationError
from twisted_nat.punch import birthday, meeting
from twisted_nat.rendezvous import make_rendezvous_service
from twisted_nat.service import NATTraversalService
from twisted_nat.status import status_service
from twisted_nat.stun.client import DEFAULT_STUN_PORT
from twisted_nat.stun.server import BindingServer, STUNServerGroup
from twisted_nat.turn.uri import TURNServer, parse_turn_uri

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_ALTERNATE_ADDRESS = "127.0.0.2"
DEFAULT_PORT = 3478
DEFAULT_ALTERNATE_PORT = 3479
DEFAULT_RENDEZVOUS = "tcp:8765:interface=127.0.0.1"
TURN_PASSWORD_ENVIRONMENT = "TWISTED_NAT_TURN_PASSWORD"


class ServerOptions(usage.Options):
    """Options of C{twistd nat server}."""

    synopsis = "[options]"
    longdesc = (
        "Run a STUN server (RFC 8489) and a rendezvous server for peers. By default the "
        "STUN server serves RFC 5780 NAT behaviour discovery on four sockets: two "
        "addresses times two ports. With --single it answers on one socket only."
    )
    optFlags = [
        ["single", "s", "Serve plain STUN on one socket (no RFC 5780 discovery)."],
        ["no-rendezvous", None, "Do not run the rendezvous server."],
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
        [
            "rendezvous",
            "r",
            DEFAULT_RENDEZVOUS,
            "Server endpoint of the rendezvous server (e.g. tcp:8765, tls:...).",
        ],
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


class PeerOptions(usage.Options):
    """Options of C{twistd nat peer}."""

    synopsis = "--name NAME --rendezvous ENDPOINT [options]"
    longdesc = (
        "Run a peer: bind one UDP socket, learn its public address and NAT type from the "
        "STUN servers, register NAME at the rendezvous server, and connect to the peers "
        "named with --connect (or wait to be connected to). Every connection is "
        "authenticated, kept alive, and re-punched if its path is lost. With --turn "
        "(repeatable, RFC 7065 URIs, all sharing --turn-user and the password), "
        "connections can be relayed through TURN servers when no direct path works. "
        "Behind symmetric NATs, direct paths come from the birthday method (random "
        "ports) and meeting runs (ports in sequence); 0 switches either off."
    )
    optFlags = [
        ["no-keepalive", None, "Do not send keep-alives."],
        ["echo", "e", "Send every datagram a peer sends back to it."],
        [
            "follow-lifetime",
            None,
            "Measure how long the NAT keeps idle bindings and keep alive at half that.",
        ],
    ]
    optParameters = [
        ["name", "n", None, "Our name at the rendezvous server."],
        [
            "rendezvous",
            "r",
            None,
            "Client endpoint of the rendezvous server, e.g. tcp:host=HOST:port=8765.",
        ],
        ["port", "p", "0", "Local UDP port (0: any)."],
        ["interface", "i", "0.0.0.0", "Local address to bind."],
        # Numeric defaults: usage.Options coerces given values only, not defaults.
        ["keepalive-interval", None, 25.0, "Seconds between keep-alives.", float],
        ["status", None, None, "Serve our state as JSON on this endpoint, e.g. tcp:8080."],
        ["greet-every", None, 0.0, "Send each connected peer a datagram this often (s).", float],
        ["turn-user", None, None, "User name on the --turn servers (one for all of them)."],
        [
            "turn-password",
            None,
            None,
            "Password on the --turn servers. Anyone who can list processes can read it "
            f"here: prefer the environment variable {TURN_PASSWORD_ENVIRONMENT}, which is "
            "read when this option is not given.",
        ],
        # Parsed in postOptions, so that a bad value is refused naming its option.
        [
            "birthday-sockets",
            None,
            str(birthday.DEFAULT_SOCKETS),
            "Behind a symmetric NAT with random ports: extra sockets opened for a punch "
            "with a port-restricted cone (0: no birthday method).",
        ],
        [
            "birthday-probes",
            None,
            str(birthday.DEFAULT_PROBES),
            "Behind a cone: random ports of such a symmetric NAT probed at most "
            "(0: no birthday method).",
        ],
        [
            "birthday-rate",
            None,
            str(birthday.DEFAULT_RATE),
            "Birthday probes a second (more than 0).",
        ],
        [
            "meeting-sockets",
            None,
            str(meeting.DEFAULT_SOCKETS),
            "Behind a symmetric NAT with ports in sequence: extra sockets run at a peer "
            "behind another such NAT (0: no meeting).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["stun"] = []
        self["connect"] = []
        self["turn"] = []

    def opt_stun(self, server: str) -> None:
        """A STUN server, HOST[:PORT] (repeatable)."""
        try:
            self["stun"].append(parse_hostport(server, DEFAULT_STUN_PORT))
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None

    def opt_connect(self, peer: str) -> None:
        """Connect to this peer once ready (repeatable)."""
        self["connect"].append(peer)

    def opt_turn(self, uri: str) -> None:
        """A TURN server, turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT]."""
        # Parsed in postOptions, once the credentials (which may come after) are known.
        self["turn"].append(uri)

    def postOptions(self) -> None:
        if not self["name"]:
            raise usage.UsageError("a peer needs --name")
        if not self["rendezvous"]:
            raise usage.UsageError("a peer needs --rendezvous ENDPOINT")
        try:
            self["port"] = parse_port(self["port"])
            self["interface"] = parse_ip(self["interface"])
            for option in ("birthday-sockets", "birthday-probes", "meeting-sockets"):
                self[option] = _parse_count(option, self[option])
            self["birthday-rate"] = _parse_rate("birthday-rate", self["birthday-rate"])
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None
        if self["keepalive-interval"] <= 0:
            raise usage.UsageError("--keepalive-interval must be positive")
        self["turn"] = self._turn_servers()

    def _turn_servers(self) -> list[TURNServer]:
        """
        The --turn URIs with their credentials.  A user name or password
        without any --turn is refused too: it is most likely a --turn that
        was lost on the way, and running without a relay would go unnoticed.
        """
        uris: list[str] = self["turn"]
        user: str | None = self["turn-user"]
        password: str | None = self["turn-password"]
        if not uris:
            if user is not None or password is not None:
                raise usage.UsageError("--turn-user and --turn-password need a --turn URI")
            return []
        if password is None:
            password = os.environ.get(TURN_PASSWORD_ENVIRONMENT)
        if not user:
            raise usage.UsageError("--turn needs --turn-user")
        if not password:
            raise usage.UsageError(
                f"--turn needs --turn-password or {TURN_PASSWORD_ENVIRONMENT} in the environment"
            )
        servers: list[TURNServer] = []
        for uri in uris:
            try:
                server = parse_turn_uri(uri, user, password)
            except ConfigurationError as e:
                raise usage.UsageError(str(e)) from None
            if server in servers:
                raise usage.UsageError(f"TURN server {server.uri()} is given twice")
            servers.append(server)
        return servers


def _parse_count(option: str, text: str) -> int:
    """A number of sockets or probes: a whole number, 0 or more."""
    try:
        count = int(text, 10)
    except ValueError:
        raise ConfigurationError(f"--{option} must be a whole number, not {text!r}") from None
    if count < 0:
        raise ConfigurationError(f"--{option} cannot be negative (0 switches it off): {count}")
    return count


def _parse_rate(option: str, text: str) -> float:
    """A rate: a finite number above 0."""
    try:
        rate = float(text)
    except ValueError:
        raise ConfigurationError(f"--{option} must be a number, not {text!r}") from None
    if not (rate > 0 and math.isfinite(rate)):
        raise ConfigurationError(f"--{option} must be positive and finite: {text}")
    return rate


class DemoOptions(usage.Options):
    """Options of C{twistd nat demo} (what C{twistd nat} runs)."""

    longdesc = (
        "Everything on loopback, nothing else needed: an RFC 5780 STUN server on "
        "127.0.0.1 and 127.0.0.2, a rendezvous server, and peers alice and bob; alice "
        "connects to bob and they greet each other every few seconds."
    )
    optParameters = [
        ["status", None, None, "Serve alice's state as JSON on this endpoint, e.g. tcp:8080."],
        ["rendezvous", "r", DEFAULT_RENDEZVOUS, "Server endpoint of the rendezvous server."],
    ]


class Options(usage.Options):
    """Options of C{twistd nat}."""

    synopsis = "<command> [options]"
    longdesc = "NAT traversal for Twisted. Without a command, runs the loopback demonstration."
    subCommands = [
        ["server", None, ServerOptions, "Run a STUN server and a rendezvous server."],
        ["peer", None, PeerOptions, "Run a peer that connects to others through NATs."],
        ["demo", None, DemoOptions, "Servers and two peers on loopback (the default)."],
    ]
    defaultSubCommand = "demo"

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
            stream.write(f"twisted-nat: cannot listen on {address}: {reason}\n")
            stream.flush()
            raise SystemExit(1) from None


class Greeter(DatagramProtocol):
    """
    What a C{twistd nat} peer does with a connection: log what arrives (and
    echo it, with C{--echo}), and greet the peer every few seconds.
    """

    log = Logger()
    noisy = False

    def __init__(self, connection: PeerConnection, reactor: Any, echo: bool, every: float) -> None:
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

    def datagramReceived(self, datagram: bytes, addr: tuple[str, int]) -> None:
        self.log.info(
            "{peer} says {text!r} (path {path})",
            peer=self.connection.peer,
            text=datagram[:60].decode("utf-8", "replace"),
            path=self.connection.describe_path(),
        )
        if self.echo and not datagram.startswith(b"echo: "):
            self.connection.write(b"echo: " + datagram)


def _peer(
    reactor: Any,
    name: str,
    rendezvous: str,
    stun: list[tuple[str, int]],
    connect: list[str],
    port: int = 0,
    interface: str = "0.0.0.0",
    keepalive: bool = True,
    interval: float = 25.0,
    echo: bool = False,
    greet_every: float = 0.0,
    follow_lifetime: bool = False,
    turn_servers: Sequence[TURNServer] = (),
    birthday_sockets: int = birthday.DEFAULT_SOCKETS,
    birthday_probes: int = birthday.DEFAULT_PROBES,
    birthday_rate: float = birthday.DEFAULT_RATE,
    meeting_sockets: int = meeting.DEFAULT_SOCKETS,
) -> NATTraversalService:
    service = NATTraversalService(
        port,
        stun,
        enable_keepalive=keepalive,
        keepalive_interval=interval,
        reactor=reactor,
        interface=interface,
        name=name,
        rendezvous=rendezvous,
        protocol_factory=lambda connection: Greeter(connection, reactor, echo, greet_every),
        connect_to=connect,
        follow_lifetime=follow_lifetime,
        turn_servers=turn_servers,
        birthday_sockets=birthday_sockets,
        birthday_probes=birthday_probes,
        birthday_rate=birthday_rate,
        meeting_sockets=meeting_sockets,
    )
    return service


def makeService(config: Options, reactor: Any = None) -> IService:
    """Build the service tree for C{twistd nat}."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    command = config.subCommand or "demo"
    sub = config.subOptions if config.subCommand else DemoOptions()
    if config.subCommand is None:
        sub.parseOptions([])
    top = _ExitOnListenFailure()
    try:
        if command == "server":
            alternate = None if sub["single"] else (sub["alternate-address"], sub["alternate-port"])
            STUNServerService(
                reactor, (sub["address"], sub["port"]), alternate, sub["software"] or None
            ).setServiceParent(top)
            if not sub["no-rendezvous"]:
                make_rendezvous_service(reactor, sub["rendezvous"]).setServiceParent(top)
        elif command == "peer":
            peer = _peer(
                reactor,
                sub["name"],
                sub["rendezvous"],
                sub["stun"],
                sub["connect"],
                sub["port"],
                sub["interface"],
                not sub["no-keepalive"],
                sub["keepalive-interval"],
                sub["echo"],
                sub["greet-every"],
                sub["follow-lifetime"],
                sub["turn"],
                birthday_sockets=sub["birthday-sockets"],
                birthday_probes=sub["birthday-probes"],
                birthday_rate=sub["birthday-rate"],
                meeting_sockets=sub["meeting-sockets"],
            )
            peer.setServiceParent(top)
            if sub["status"]:
                status_service(sub["status"], peer, reactor).setServiceParent(top)
        else:
            _demo(reactor, sub).setServiceParent(top)
    except (ConfigurationError, ValueError) as e:
        raise SystemExit(f"twistd nat: {e}") from None
    return top


def _demo(reactor: Any, options: DemoOptions) -> MultiService:
    """The servers and two peers, on loopback only."""
    demo = MultiService()
    primary = (DEFAULT_ADDRESS, DEFAULT_PORT)
    alternate = (DEFAULT_ALTERNATE_ADDRESS, DEFAULT_ALTERNATE_PORT)
    STUNServerService(reactor, primary, alternate, "twisted-nat").setServiceParent(demo)
    rendezvous = make_rendezvous_service(reactor, options["rendezvous"])
    rendezvous.setServiceParent(demo)
    port = _port_of(options["rendezvous"])
    client_endpoint = f"tcp:host={DEFAULT_ADDRESS}:port={port}"
    bob = _peer(reactor, "bob", client_endpoint, [primary], [], interface="127.0.0.1", echo=True)
    alice = _peer(
        reactor,
        "alice",
        client_endpoint,
        [primary],
        ["bob"],
        interface="127.0.0.1",
        greet_every=5.0,
    )
    bob.setServiceParent(demo)
    alice.setServiceParent(demo)
    if options["status"]:
        status_service(options["status"], alice, reactor).setServiceParent(demo)
    return demo


def _port_of(endpoint: str) -> int:
    """The port of a C{tcp:PORT...} server endpoint string, for the demo's clients."""
    parts = endpoint.split(":")
    if len(parts) < 2 or parts[0] != "tcp":
        raise ConfigurationError(f"the demo's rendezvous must be a tcp: endpoint, not {endpoint!r}")
    port_text = parts[1].split("=")[-1]
    return parse_port(port_text)
