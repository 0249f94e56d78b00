"""
The C{twisted-nat} command.

    twisted-nat stun [--timeout S] [--bind ADDR] HOST[:PORT] [HOST[:PORT] ...]

prints this machine's public (server-reflexive) address as JSON;

    twisted-nat detect --stun HOST[:PORT] [--stun ...] [--json]

discovers the NAT behaviour (RFC 5780) and prints it readably or as JSON;

    twisted-nat key new PATH

creates a key file (an identity: a peer is its key) that only its owner
may read, and prints its public key; it never overwrites a file;

    twisted-nat key show PATH

prints the public key of the key file at PATH, for giving to others;

    twisted-nat receive --name NAME [--output DIR] [connection options]
    twisted-nat send PATH... --to NAME[=KEY] [connection options]

send files between peers (L{twisted_nat.transfer}).
Every failure ends with one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorTime, IReactorUDP
from twisted.internet.task import react
from twisted.python import usage

from twisted_nat.address import format_address, parse_hostport
from twisted_nat.errors import ConfigurationError, TwistedNATError
from twisted_nat.nat import detect_nat
from twisted_nat.stun.client import DEFAULT_STUN_PORT, DiscoveryResult, STUNClient
from twisted_nat.tap.connection_options import stun_server
from twisted_nat.transfer.options import ReceiveOptions, SendOptions
from twisted_nat.trust import create_identity, load_identity


class StunOptions(usage.Options):
    synopsis = "[options] HOST[:PORT] [HOST[:PORT] ...]"
    longdesc = "Ask STUN servers for this host's public address; print it as JSON."
    optParameters = [
        ["timeout", "t", 5.0, "Give up after this many seconds.", float],
        ["bind", "b", "0.0.0.0:0", "Local address and port to send from."],
    ]

    def parseArgs(self, *servers: str) -> None:
        if not servers:
            raise usage.UsageError("name at least one STUN server")
        try:
            self["servers"] = [parse_hostport(s, DEFAULT_STUN_PORT) for s in servers]
            self["bind"] = parse_hostport(self["bind"], 0)
        except ConfigurationError as e:
            raise usage.UsageError(str(e)) from None
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be positive")


class DetectOptions(usage.Options):
    synopsis = "--stun HOST[:PORT] [--stun HOST[:PORT] ...] [options]"
    longdesc = (
        "Discover the NAT behaviour between this host and the STUN servers (RFC 5780): "
        "mapping, filtering, hairpinning and the classic NAT type. Use a server that "
        "offers RFC 5780 (two addresses, two ports), such as `twistd nat server`."
    )
    optFlags = [
        ["json", "j", "Print the result as JSON."],
        ["lifetime", "l", "Also measure how long an idle binding lives (takes minutes)."],
    ]
    optParameters = [
        ["interface", "i", "0.0.0.0", "Local address to bind."],
        ["timeout", "t", 5.0, "How long the first contact with a server may take.", float],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["stun"] = []

    def opt_stun(self, server: str) -> None:
        """A STUN server, HOST[:PORT] (repeatable; port 3478 if not given)."""
        self["stun"].append(stun_server(server))

    opt_s = opt_stun

    def postOptions(self) -> None:
        if not self["stun"]:
            raise usage.UsageError("name a STUN server with --stun HOST[:PORT]")
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be positive")


class _KeyFileOptions(usage.Options):
    synopsis = "PATH"
    command = ""

    def parseArgs(self, *paths: str) -> None:
        if len(paths) != 1:
            raise usage.UsageError(f"name one key file: twisted-nat key {self.command} PATH")
        self["path"] = paths[0]


class KeyNewOptions(_KeyFileOptions):
    command = "new"
    longdesc = (
        "Create a new key file at PATH, readable by its owner only, and print its public "
        "key. An existing file is never overwritten."
    )


class KeyShowOptions(_KeyFileOptions):
    command = "show"
    longdesc = "Print the public key of the key file at PATH, for giving to other peers."


class KeyOptions(usage.Options):
    synopsis = "<new|show> PATH"
    longdesc = (
        "A peer is its key: a key file holds our private key, and its public key is what "
        "other peers know us by."
    )
    subCommands = [
        ["new", None, KeyNewOptions, "Create a key file and print its public key."],
        ["show", None, KeyShowOptions, "Print the public key of a key file."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("name a key command: new, show")


class Options(usage.Options):
    synopsis = "<command> [options]"
    subCommands = [
        ["stun", None, StunOptions, "Print this host's public address as JSON."],
        ["detect", None, DetectOptions, "Discover the NAT type and behaviour (RFC 5780)."],
        ["key", None, KeyOptions, "Create a key file, or show the public key of one."],
        ["send", None, SendOptions, "Send files and directories to a peer."],
        ["receive", None, ReceiveOptions, "Receive files a peer sends."],
    ]

    def postOptions(self) -> None:
        if self.subCommand is None:
            raise usage.UsageError("name a command: stun, detect, key, send, receive")


def discovery_json(result: DiscoveryResult) -> str:
    return json.dumps(
        {
            "mapped_address": format_address(result.mapped),
            "host": result.mapped[0],
            "port": result.mapped[1],
            "local_address": format_address(result.local),
            "server": format_address(result.server),
            "rtt_ms": round(result.rtt * 1000, 3),
        }
    )


async def _stun(reactor: IReactorUDP, options: StunOptions) -> None:
    client = STUNClient(
        options["servers"], timeout=options["timeout"], reactor=IReactorTime(reactor)
    )
    host, port = options["bind"]
    try:
        listening = reactor.listenUDP(port, client, interface=host, maxPacketSize=8192)
    except CannotListenError as e:
        address = format_address(options["bind"])
        raise ConfigurationError(f"cannot bind {address}: {e.socketError}") from None
    try:
        result = await client.discover()
    finally:
        await Deferred.fromCoroutine(_stop(listening))
    print(discovery_json(result))


async def _detect(reactor: object, options: DetectOptions) -> None:
    behavior = await detect_nat(
        reactor,  # type: ignore[arg-type]
        options["stun"],
        options["interface"],
        lifetime=bool(options["lifetime"]),
        timeout=options["timeout"],
    )
    if options["json"]:
        print(json.dumps(behavior.as_json()))
    else:
        print(behavior.describe())


def _key(options: KeyOptions) -> None:
    path = options.subOptions["path"]
    identity = create_identity(path) if options.subCommand == "new" else load_identity(path)
    print(identity.public.text)


async def _stop(listening: IListeningPort) -> None:
    result = listening.stopListening()
    if isinstance(result, Deferred):
        await result


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the C{twisted-nat} console script."""
    options = Options()
    try:
        options.parseOptions(list(sys.argv[1:] if argv is None else argv))
    except usage.UsageError as e:
        sys.exit(f"twisted-nat: {e}")

    if options.subCommand == "key":
        # Files only: no reactor to start.
        try:
            _key(options.subOptions)
        except TwistedNATError as e:
            sys.stderr.write(f"twisted-nat: {e}\n")
            raise SystemExit(1) from None
        return

    if options.subCommand in ("send", "receive"):
        # Imported here: the other commands need neither QUIC nor the service.
        from twisted_nat.transfer import command

        sub = options.subOptions
        main = command.send if options.subCommand == "send" else command.receive
        command.exit_at_once(command.run(lambda reactor: main(reactor, sub)))

    async def run(reactor: object) -> None:
        try:
            if options.subCommand == "detect":
                await _detect(reactor, options.subOptions)
            else:
                await _stun(IReactorUDP(reactor), options.subOptions)
        except TwistedNATError as e:
            sys.stderr.write(f"twisted-nat: {e}\n")
            raise SystemExit(1) from None

    react(lambda reactor: ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main()
