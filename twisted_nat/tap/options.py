"""
The options of C{twistd nat} and its sub-commands, and their parsing: a bad
setting becomes a C{UsageError} naming its option, which L{Options} turns
into one line and exit status 1.
"""

from __future__ import annotations

import attrs
from twisted.python import usage

from twisted_nat.address import parse_ip, parse_port
from twisted_nat.cluster.address import parse_redis_address
from twisted_nat.errors import ConfigurationError
from twisted_nat.limits import DESCRIPTOR_RESERVE
from twisted_nat.portmap import Mode
from twisted_nat.punch import birthday, meeting
from twisted_nat.rendezvous.interfaces import DEFAULT_RELAY_TIMEOUT
from twisted_nat.rendezvous.quotas import ServerLimits
from twisted_nat.stun.sourcelimit import DEFAULT_RATE
from twisted_nat.tap.connection_options import PeerConnectionOptions
from twisted_nat.tap.logs import LEVELS, level_named
from twisted_nat.tap.parsing import parse_count as _parse_count
from twisted_nat.tap.parsing import parse_limit as _parse_limit
from twisted_nat.tap.parsing import parse_rate as _parse_rate
from twisted_nat.trust.known import Accept
from twisted_nat.trust.target import Target

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_ALTERNATE_ADDRESS = "127.0.0.2"
DEFAULT_PORT = 3478
DEFAULT_ALTERNATE_PORT = 3479
DEFAULT_RENDEZVOUS = "tcp:8765:interface=127.0.0.1"
STATUS_EXAMPLE = "tcp:8080:interface=127.0.0.1"
"""
The status shows names, keys, addresses and candidates: the example binds
loopback only, as C{tcp:8080} alone would bind every interface.
"""
_LIMITS = ServerLimits()


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
        ["address6", None, None, "Also serve STUN on this IPv6 address, on --port."],
        [
            "alternate-address6",
            None,
            None,
            "Second IPv6 address: RFC 5780 discovery over IPv6 too (with --address6).",
        ],
        ["software", None, "twisted-nat", "SOFTWARE attribute value; empty for none."],
        [
            "rendezvous",
            "r",
            DEFAULT_RENDEZVOUS,
            "Server endpoint of the rendezvous server (e.g. tcp:8765, tls:...).",
        ],
        [
            "registry",
            None,
            None,
            "SQLite file keeping which key each name belongs to, across restarts "
            "(default: memory only, forgotten when the server stops).",
        ],
        [
            "status",
            None,
            None,
            "Serve the rendezvous server's state (counters, Redis) as JSON on this "
            f"endpoint, e.g. {STATUS_EXAMPLE}.",
        ],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics of the rendezvous server on this endpoint, e.g. "
            "tcp:9100:interface=127.0.0.1; needs twisted-nat[metrics].",
        ],
        [
            "redis",
            None,
            None,
            "Share names and peers with other rendezvous nodes through this Redis: a "
            "client endpoint (tcp:10.0.0.5:6379, unix:/run/redis.sock) or a "
            "redis://HOST[:PORT][/DB] URL. Bindings then live in Redis (run it with "
            "appendonly yes); needs twisted-nat[redis].",
        ],
        [
            "rate-limit",
            None,
            str(int(DEFAULT_RATE)),
            "STUN requests a second answered per source IP, after a burst of "
            "--rate-burst; 0 for no limit.",
        ],
        [
            "rate-burst",
            None,
            None,
            "STUN requests answered at once per source IP (default: twice --rate-limit).",
        ],
        # Parsed in postOptions, so that a bad value is refused naming its option.
        [
            "max-connections",
            None,
            str(_LIMITS.max_connections),
            "Rendezvous connections at once, in all; lowered to the descriptor limit "
            f"(ulimit -n) less {DESCRIPTOR_RESERVE}.",
        ],
        [
            "max-per-ip",
            None,
            str(_LIMITS.max_per_source),
            "Rendezvous connections at once from one IPv4 address or IPv6 /64.",
        ],
        [
            "register-rate",
            None,
            f"{_LIMITS.register_rate:g}",
            "Name registrations a second from one IPv4 address or IPv6 /64, after a "
            f"burst of {_LIMITS.register_burst}.",
        ],
        [
            "idle-timeout",
            None,
            f"{_LIMITS.idle_timeout:g}",
            "Seconds a rendezvous connection may stay without registering a name.",
        ],
        [
            "offer-timeout",
            None,
            f"{DEFAULT_RELAY_TIMEOUT:g}",
            "Seconds an offer waits for the peer's answer; then its sender is told the "
            "peer did not answer.",
        ],
        [
            "max-pending-offers",
            None,
            str(_LIMITS.max_pending),
            "Offers waiting for answers, in all; each connection may have "
            f"{_LIMITS.max_pending_per_connection} sent and {_LIMITS.max_pending_per_connection} "
            "to answer.",
        ],
    ]

    def postOptions(self) -> None:
        try:
            self["rate-limit"] = _parse_limit(self["rate-limit"], self["rate-burst"])
            self["limits"] = self._limits()
            self["offer-timeout"] = _parse_rate("offer-timeout", self["offer-timeout"])
            self["address"] = parse_ip(self["address"])
            self["port"] = parse_port(self["port"])
            self["alternate-address"] = parse_ip(self["alternate-address"])
            self["alternate-port"] = parse_port(self["alternate-port"])
            for option in ("address6", "alternate-address6"):
                if self[option] is not None and ":" not in parse_ip(self[option]):
                    raise ConfigurationError(f"--{option} is no IPv6 address: {self[option]}")
            if self["alternate-address6"] is not None and self["address6"] is None:
                raise ConfigurationError("--alternate-address6 needs --address6")
            if self["redis"] is not None:
                self["redis"] = parse_redis_address(self["redis"])
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None
        if self["no-rendezvous"] and (self["status"] or self["redis"] or self["metrics"]):
            raise usage.UsageError("--status, --metrics and --redis are the rendezvous server's")
        if self["redis"] is not None and self["registry"] is not None:
            raise usage.UsageError(
                "--redis and --registry exclude each other: with --redis the names live in Redis"
            )
        if not self["single"]:
            if self["address"] == self["alternate-address"]:
                raise usage.UsageError("RFC 5780 mode needs two different addresses (or --single)")
            if self["port"] == self["alternate-port"]:
                raise usage.UsageError("RFC 5780 mode needs two different ports (or --single)")

    def _limits(self) -> ServerLimits:
        """The rendezvous server's limits, from their options."""
        counts = {}
        for option in ("max-connections", "max-per-ip", "max-pending-offers"):
            counts[option] = _parse_count(option, self[option])
            if counts[option] == 0:
                raise ConfigurationError(f"--{option} must be at least 1")
        return attrs.evolve(
            _LIMITS,
            max_connections=counts["max-connections"],
            max_per_source=counts["max-per-ip"],
            max_pending=counts["max-pending-offers"],
            register_rate=_parse_rate("register-rate", self["register-rate"]),
            idle_timeout=_parse_rate("idle-timeout", self["idle-timeout"]),
        )


class PeerOptions(PeerConnectionOptions):
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
        ["accept", None, "anyone", "Whose offers to answer: anyone, or known (pinned) peers."],
        [
            "ipv6",
            None,
            "auto",
            "auto: an IPv6 socket too where the machine has IPv6, its paths raced against "
            "IPv4's and taken when about as quick; off: IPv4 only.",
        ],
        ["interface6", None, None, "Local IPv6 address to bind (default: all, if --interface is)."],
        [
            "port-mapping",
            None,
            Mode.AUTO.value,
            "Ask the default gateway to forward a public port to our socket, and offer it "
            "to peers: auto (PCP, then NAT-PMP, then UPnP-IGD), pcp, natpmp, upnp or off.",
        ],
        ["status", None, None, f"Serve our state as JSON on this endpoint, e.g. {STATUS_EXAMPLE}."],
        [
            "metrics",
            None,
            None,
            "Serve Prometheus metrics (punches by NAT types and path, set-up time, paths "
            "lost) on this endpoint, e.g. tcp:9101:interface=127.0.0.1; needs "
            "twisted-nat[metrics].",
        ],
        # Numeric defaults: usage.Options coerces given values only, not defaults.
        ["greet-every", None, 0.0, "Send each connected peer a datagram this often (s).", float],
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
        self["connect"] = []

    def opt_connect(self, peer: str) -> None:
        """Connect to this peer once ready: NAME, NAME=KEY or KEY (repeatable)."""
        try:
            self["connect"].append(Target.parse(peer))
        except ValueError as e:
            raise usage.UsageError(f"--connect {peer}: {e}") from None

    def postOptions(self) -> None:
        if not self["name"]:
            raise usage.UsageError("a peer needs --name")
        if not self["rendezvous"]:
            raise usage.UsageError("a peer needs --rendezvous ENDPOINT")
        self.check_connection()
        try:
            if self["interface6"] is not None and ":" not in parse_ip(self["interface6"]):
                raise ConfigurationError(f"--interface6 is no IPv6 address: {self['interface6']}")
            if self["ipv6"] not in ("auto", "off"):
                raise ConfigurationError(f"--ipv6 must be auto or off, not {self['ipv6']!r}")
            for option in ("birthday-sockets", "birthday-probes", "meeting-sockets"):
                self[option] = _parse_count(option, self[option])
            self["birthday-rate"] = _parse_rate("birthday-rate", self["birthday-rate"])
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None
        try:
            self["accept"] = Accept(self["accept"])
        except ValueError:
            raise usage.UsageError(
                f"--accept must be anyone or known, not {self['accept']!r}"
            ) from None
        try:
            self["port-mapping"] = Mode(self["port-mapping"])
        except ValueError:
            choices = ", ".join(mode.value for mode in Mode)
            raise usage.UsageError(
                f"--port-mapping must be one of {choices}, not {self['port-mapping']!r}"
            ) from None


class DemoOptions(usage.Options):
    """Options of C{twistd nat demo} (what C{twistd nat} runs)."""

    longdesc = (
        "Everything on loopback, nothing else needed: an RFC 5780 STUN server on "
        "127.0.0.1 and 127.0.0.2, a rendezvous server, and peers alice and bob; alice "
        "connects to bob and they greet each other every few seconds."
    )
    optParameters = [
        [
            "status",
            None,
            None,
            f"Serve alice's state as JSON on this endpoint, e.g. {STATUS_EXAMPLE}.",
        ],
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
    optParameters = [
        [
            "log-level",
            None,
            "info",
            f"What twistd prints: {', '.join(LEVELS)} and above. At info, the story "
            "(NAT found, peer connected, path changed); debug adds every socket and packet.",
        ],
    ]

    def postOptions(self) -> None:
        try:
            self["log-level"] = level_named(self["log-level"])
        except ValueError as e:
            raise usage.UsageError(str(e)) from None

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Report a bad setting as one line and exit status 1, instead of
        twistd's habit of printing its whole usage text first.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise SystemExit(f"twistd nat: {e}") from None
