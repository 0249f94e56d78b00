"""
The options by which a peer reaches others, defined once for
C{twistd nat peer} and for C{twisted-nat send} and C{receive}, so that the
commands take the same connection options, parsed the same way.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.python import usage

from twisted_nat.address import parse_hostport, parse_ip, parse_port
from twisted_nat.errors import ConfigurationError
from twisted_nat.stun.client import DEFAULT_STUN_PORT
from twisted_nat.tap.turn import TURN_PASSWORD_ENVIRONMENT, turn_servers


def stun_server(text: str) -> tuple[str, int]:
    """A C{--stun} value, HOST[:PORT] (port 3478 if not given), or L{usage.UsageError}."""
    try:
        return parse_hostport(text, DEFAULT_STUN_PORT)
    except ConfigurationError as e:
        raise usage.UsageError(str(e)) from None


class PeerConnectionOptions(usage.Options):
    """
    Rendezvous, STUN and TURN servers, our key and pins, the local socket
    and the keep-alive interval.  A command names its own defaults in
    C{help} (option name to help text), and calls L{check_connection} from
    its C{postOptions}.
    """

    help: ClassVar[dict[str, str]] = {}

    optParameters: list[list[Any]] = [
        [
            "key",
            "k",
            None,
            "Our key file (made, mode 0600, if missing); without it a new key is made "
            "for this run only, and peers that pinned us refuse the next one.",
        ],
        [
            "known-peers",
            None,
            None,
            "File of the keys pinned to peer names, one 'NAME KEY' per line (default: "
            "memory only).",
        ],
        ["port", "p", "0", "Local UDP port (0: any)."],
        ["interface", "i", "0.0.0.0", "Local address to bind."],
        ["turn-user", None, None, "User name on the --turn servers (one for all of them)."],
        [
            "turn-password",
            None,
            None,
            "Password on the --turn servers. Anyone who can list processes can read it "
            f"here: prefer the environment variable {TURN_PASSWORD_ENVIRONMENT}, which is "
            "read when this option is not given.",
        ],
        # Numeric defaults: usage.Options coerces given values only, not defaults.
        [
            "keepalive-interval",
            None,
            25.0,
            "Seconds between keep-alives (a probe waits at most as long for its answer); "
            "shorter finds a dead path sooner, and moves to a relay sooner.",
            float,
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["stun"] = []
        self["turn"] = []
        self["rendezvous"] = []
        self.docs.update(self.help)

    def opt_rendezvous(self, endpoint: str) -> None:
        """
        Client endpoint of the rendezvous server, e.g. tcp:host=HOST:port=8765;
        repeatable, for the nodes of one rendezvous: the peer stays registered
        at one and moves to the next when it goes away.
        """
        if endpoint in self["rendezvous"]:
            raise usage.UsageError(f"--rendezvous {endpoint} is given twice")
        self["rendezvous"].append(endpoint)

    opt_r = opt_rendezvous

    def opt_stun(self, server: str) -> None:
        """A STUN server, HOST[:PORT] (repeatable)."""
        self["stun"].append(stun_server(server))

    def opt_turn(self, uri: str) -> None:
        """A TURN server, turn:HOST[:PORT][?transport=udp|tcp] or turns:HOST[:PORT]."""
        # Parsed in check_connection, once the credentials (which may come after) are known.
        self["turn"].append(uri)

    def check_connection(self) -> None:
        """
        Parse what could not be parsed as it came: the local socket, the
        keep-alive interval, the TURN servers with their credentials.
        """
        try:
            self["port"] = parse_port(self["port"])
            self["interface"] = parse_ip(self["interface"])
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None
        if self["keepalive-interval"] <= 0:
            raise usage.UsageError("--keepalive-interval must be positive")
        self["turn"] = turn_servers(self["turn"], self["turn-user"], self["turn-password"])
