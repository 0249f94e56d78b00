"""
The rendezvous protocol on the wire: three AMP commands over one TCP (or
TLS) connection from each peer to the server, and the AMP base that both
ends share.

    client -> server   Register(name)          -> {}
    client -> server   Connect(to, offer)      -> {answer}
    server -> client   DeliverOffer(offer)     -> {answer}

The server (L{twisted_nat.rendezvous.server}) relays a C{Connect} to the
connection registered as C{to} as a C{DeliverOffer}, and that peer's answer
back as the C{Connect}'s answer; the client's end is in
L{twisted_nat.rendezvous.client}.  AMP already pairs every answer with its
question and fails whatever is outstanding when a connection drops, which
is all the bookkeeping a relay needs.

Offers and answers travel as JSON in one AMP value each, and their NAT
hint, if any, as JSON in a key of its own beside it (C{offer-nat},
C{answer-nat}): AMP skips keys it does not know, where an offer's JSON
may have none, so peers and servers that know no hints read the offer and
pass over the hint (such a server relays offers without it).  Everything
is checked while the box is parsed: anything malformed from the network is
refused with a C{MALFORMED} error and never reaches a responder, and the
connection stays up.  Every refusal is one of the exceptions of
L{twisted_nat.errors}, mapped to an AMP error code, so the caller's
Deferred fails with the same type the server raised.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from twisted_nat.address import format_address
from twisted_nat.errors import (
    DuplicateName,
    MalformedSignal,
    NotRegistered,
    PeerUnavailable,
    UnknownPeer,
)
from twisted_nat.rendezvous.values import Answer, Offer, check_name

MALFORMED = b"MALFORMED"
_MAX_DESCRIPTION = 200


def _loads(data: bytes) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as e:
        raise MalformedSignal(f"not JSON: {e}") from None


def _dumps(value: Offer | Answer) -> bytes:
    return json.dumps(value.as_json(), separators=(",", ":")).encode("ascii")


class NameArgument(amp.Unicode):
    """A peer name, refused while parsing unless L{check_name} accepts it."""

    def fromString(self, inString: bytes) -> str:
        try:
            return check_name(super().fromString(inString))
        except ValueError as e:
            raise MalformedSignal(str(e)) from None


_HINT = b"-nat"
"""What the name of a hint's key adds to the name of its offer's or answer's."""


class _SignalArgument(amp.Argument):
    """An L{Offer} or L{Answer} as JSON, and its NAT hint under a key of its own."""

    what = "signal"
    parse: Callable[[object], Offer | Answer]
    """The value's C{from_json}: it raises C{ValueError} for anything malformed."""

    def fromString(self, inString: bytes) -> Offer | Answer:
        return self._parse(_loads(inString))

    def toString(self, inObject: Offer | Answer) -> bytes:
        return _dumps(inObject)

    def _parse(self, value: object) -> Offer | Answer:
        try:
            return self.parse(value)
        except ValueError as e:
            raise MalformedSignal(f"malformed {self.what}: {e}") from None

    def toBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any
    ) -> None:
        fields = objects.pop(name.decode("ascii")).as_json()
        hint = fields.pop("nat", None)
        strings[name] = json.dumps(fields, separators=(",", ":")).encode("ascii")
        if hint is not None:
            strings[name + _HINT] = json.dumps(hint, separators=(",", ":")).encode("ascii")

    def fromBox(
        self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any
    ) -> None:
        fields = _loads(strings.pop(name))  # a KeyError: refused as a missing argument
        hint = strings.pop(name + _HINT, None)
        if hint is not None and isinstance(fields, dict):
            fields["nat"] = _loads(hint)
        objects[name.decode("ascii")] = self._parse(fields)


class OfferArgument(_SignalArgument):
    """An L{Offer} as JSON."""

    what = "offer"
    parse = staticmethod(Offer.from_json)


class AnswerArgument(_SignalArgument):
    """An L{Answer} as JSON."""

    what = "answer"
    parse = staticmethod(Answer.from_json)


class Register(amp.Command):
    """Make this connection reachable as C{name} (replacing any name it had)."""

    arguments = [(b"name", NameArgument())]
    response = []
    errors = {DuplicateName: b"DUPLICATE_NAME", MalformedSignal: MALFORMED}


class Connect(amp.Command):
    """Relay C{offer} to the peer registered as C{to}; its answer comes back."""

    arguments = [(b"to", NameArgument()), (b"offer", OfferArgument())]
    response = [(b"answer", AnswerArgument())]
    errors = {
        UnknownPeer: b"UNKNOWN_PEER",
        PeerUnavailable: b"PEER_UNAVAILABLE",
        NotRegistered: b"NOT_REGISTERED",
        MalformedSignal: MALFORMED,
    }


class DeliverOffer(amp.Command):
    """Sent by the server: another peer's offer, which this peer answers."""

    arguments = [(b"offer", OfferArgument())]
    response = [(b"answer", AnswerArgument())]
    errors = {PeerUnavailable: b"PEER_UNAVAILABLE", MalformedSignal: MALFORMED}


def peer_address(protocol: amp.AMP) -> str:
    """The far end of C{protocol}'s connection, for log lines."""
    if protocol.transport is None:
        return "(disconnected)"
    address = protocol.transport.getPeer()
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if isinstance(host, str) and isinstance(port, int):
        return format_address((host, port))
    return str(address)


def _describe(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        argument = error.args[0]
        if isinstance(argument, bytes):
            argument = argument.decode("ascii", "replace")
        return f"missing argument {argument!r}"
    text = str(error) or type(error).__name__
    return text if len(text) <= _MAX_DESCRIPTION else text[:_MAX_DESCRIPTION] + "..."


class SignalingAMP(amp.AMP):
    """
    AMP that answers a box it cannot parse with a C{MALFORMED} error.

    Plain AMP treats an exception while parsing arguments (a missing key,
    bad UTF-8, our own validation) as a bug in the responder: it logs a
    traceback and closes the connection.  Bytes from the network are not a
    bug, so here they are a refusal like any other.
    """

    log = Logger()

    # AMP logs every connection made and lost at info.  The server and the
    # client log what an operator needs (who registered, who left), so the
    # connection itself is debug detail here: these skip AMP's own two
    # methods, which add nothing but those log lines.

    def makeConnection(self, transport: ITransport) -> None:
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.log.debug("Connection with {peer} made", peer=peer_address(self))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.log.debug("Connection with {peer} lost", peer=peer_address(self))
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None

    def locateResponder(self, name: bytes) -> Callable[[amp.AmpBox], Any] | None:
        responder = super().locateResponder(name)
        if responder is None:
            return None

        def guarded(box: amp.AmpBox) -> Any:
            try:
                return responder(box)
            except Exception as e:
                self.log.debug(
                    "Refused a malformed {command} from {peer}: {error}",
                    command=name.decode("ascii", "replace"),
                    peer=peer_address(self),
                    error=_describe(e),
                )
                self.malformed_refused(name)
                return defer.fail(amp.RemoteAmpError(MALFORMED, _describe(e)))

        return guarded

    def malformed_refused(self, command: bytes) -> None:
        """Called for every box refused as malformed; for counters."""
