"""
The options of C{twisted-nat send} and C{twisted-nat receive}.  Their
connection options are those of C{twistd nat peer}, with the defaults of
the loopback demonstration, so that both commands work on one machine
beside C{twistd -n nat server}.
"""

from __future__ import annotations

import getopt
import os
import sys
from typing import Any, ClassVar

from twisted.python import usage

from twisted_nat.tap.connection_options import PeerConnectionOptions
from twisted_nat.tap.options import DEFAULT_ADDRESS, DEFAULT_PORT
from twisted_nat.trust.names import normalise_name
from twisted_nat.trust.target import Target

DEFAULT_RENDEZVOUS_CLIENT = "tcp:host=127.0.0.1:port=8765"
"""Where C{twistd -n nat server} (and the demonstration) runs its rendezvous server."""


class ConnectionOptions(PeerConnectionOptions):
    """
    Those of C{twistd nat peer} (L{PeerConnectionOptions}), with the
    loopback defaults, and what both commands add: C{--json}, C{--timeout}.
    """

    help: ClassVar[dict[str, str]] = {
        "key": "Our key file (made, mode 0600, if missing); default: send.key or "
        "receive-NAME.key in $XDG_CONFIG_HOME/twisted-nat (~/.config/twisted-nat).",
        "known-peers": "File of the keys pinned to peer names ('NAME KEY' lines); default for "
        "send: known_peers beside the key, for receive: memory only.",
        "rendezvous": "Client endpoint of the rendezvous server (repeatable); default: "
        "loopback's 8765.",
        "stun": "A STUN server, HOST[:PORT] (repeatable); default 127.0.0.1:3478.",
    }
    optFlags: list[list[Any]] = [
        ["json", "j", "Print one JSON object per line (for scripts) instead of progress."],
    ]
    optParameters: list[list[Any]] = [
        ["timeout", None, 30.0, "Seconds to reach the rendezvous server and the peer.", float],
    ]

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Options may come after the paths too (C{send PATH... --to bob}): Twisted
        stops at the first argument that is no option, so the options go first.
        """
        given = sys.argv[1:] if options is None else options
        try:
            found, arguments = getopt.gnu_getopt(given, self.shortOpt, self.longOpt)
        except getopt.error as e:
            raise usage.UsageError(str(e)) from None
        ordered: list[str] = []
        for option, value in found:
            if option.startswith("--"):
                takes = option[2:] + "=" in self.longOpt
                ordered.append(f"{option}={value}" if takes else option)
            else:
                ordered.append(option)
                if option[1] + ":" in self.shortOpt:
                    ordered.append(value)
        super().parseOptions([*ordered, "--", *arguments])

    def postOptions(self) -> None:
        if not self["rendezvous"]:
            self["rendezvous"] = [DEFAULT_RENDEZVOUS_CLIENT]
        if not self["stun"]:
            self["stun"] = [(DEFAULT_ADDRESS, DEFAULT_PORT)]
        self.check_connection()
        if self["timeout"] <= 0:
            raise usage.UsageError("--timeout must be positive")


class SendOptions(ConnectionOptions):
    synopsis = "PATH... --to PEER[=KEY] [options]"
    longdesc = (
        "Send files and directories to a peer running `twisted-nat receive`, over an "
        "encrypted, authenticated path punched through NATs (or relayed by TURN). Each "
        "file's SHA-256 is checked at the receiver; an interrupted transfer resumes when "
        "the same command is run again."
    )
    optParameters: list[list[Any]] = [
        ["name", "n", None, "Our name at the rendezvous server (default: send- and our key)."],
    ]

    def opt_to(self, peer: str) -> None:
        """The receiver: NAME, or NAME=KEY to insist on its key."""
        try:
            self["to"] = Target.parse(peer)
        except ValueError as e:
            raise usage.UsageError(f"--to {peer}: {e}") from None

    def parseArgs(self, *paths: str) -> None:
        if not paths:
            raise usage.UsageError("name a file or directory to send")
        self["paths"] = list(paths)

    def postOptions(self) -> None:
        if self.get("to") is None:
            raise usage.UsageError("name the receiver with --to NAME[=KEY]")
        if self["to"].name is None:
            raise usage.UsageError("--to needs the receiver's name (NAME or NAME=KEY)")
        if self["name"] is not None:
            _check_name(self["name"])
        super().postOptions()


class ReceiveOptions(ConnectionOptions):
    synopsis = "--name NAME [options]"
    longdesc = (
        "Wait for a peer to send files with `twisted-nat send PATH... --to NAME`, show "
        "who it is (its key) and what it offers, and, once accepted, receive them into "
        "the output directory. Files are written under a hidden name and renamed only "
        "once their SHA-256 checks."
    )
    optFlags: list[list[Any]] = [
        ["yes", "y", "Accept the first offer without asking."],
        ["overwrite", None, "Replace files that exist already."],
    ]
    optParameters: list[list[Any]] = [
        ["name", "n", None, "Our name at the rendezvous server: the senders' --to."],
        ["output", "o", ".", "The directory to receive into."],
    ]

    def postOptions(self) -> None:
        if not self["name"]:
            raise usage.UsageError("a receiver needs --name NAME")
        _check_name(self["name"])
        if not os.path.isdir(self["output"]):
            raise usage.UsageError(f"--output {self['output']}: no such directory")
        super().postOptions()


def _check_name(name: str) -> None:
    try:
        normalise_name(name)
    except ValueError as e:
        raise usage.UsageError(f"--name: {e}") from None
