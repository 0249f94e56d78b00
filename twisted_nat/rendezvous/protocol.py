"""
The rendezvous protocol on the wire: AMP commands over one TCP (or TLS)
connection from each peer to the server, and the AMP base that both ends
share.

    client -> server   Challenge()                     -> {server, nonce}
    client -> server   Register(name, key, signature)  -> {}
    client -> server   Release(name, key, signature)   -> {}
    client -> server   Lookup(name)                    -> {key}
    client -> server   Connect(offer)                  -> {answer}
    server -> client   DeliverOffer(offer)             -> {answer}

A peer proves it holds the key it registers a name for by signing the
server's fresh nonce with the server's id and the name
(L{registration_transcript}); the server binds
the name to the first key that does so, for good.  It relays a C{Connect}
to the connection holding the offer's recipient as a C{DeliverOffer}, and
that peer's answer back; offers and answers are signed end to end, so the
server relays what it cannot change.  AMP already pairs every answer with
its question and fails whatever is outstanding when a connection drops,
which is all the bookkeeping a relay needs.

Offers and answers travel as JSON in one AMP value each.  Everything is
checked while the box is parsed: anything malformed from the network is
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
from twisted.internet.interfaces import ITCPTransport, ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from twisted_nat.address import format_address
from twisted_nat.errors import (
    BadKey,
    DuplicateName,
    MalformedSignal,
    NotRegistered,
    PeerUnavailable,
    RegistrationRefused,
    UnknownPeer,
)
from twisted_nat.rendezvous.values import Answer, Offer, check_name
from twisted_nat.trust.keys import PeerKey

MALFORMED = b"MALFORMED"
_MAX_DESCRIPTION = 200
_REGISTER_LABEL = b"twisted-nat/1 register\x00"


def registration_transcript(server_id: bytes, nonce: bytes, action: str, name: str) -> bytes:
    """
    What a peer signs to register (or release) C{name} at the server whose
    id is C{server_id}, answering its fresh C{nonce}: valid once, at that
    server, for that name.
    """
    return _REGISTER_LABEL + b"\x00".join(
        (server_id.hex().encode(), nonce.hex().encode(), action.encode(), name.encode("utf-8"))
    )


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


class KeyArgument(amp.Unicode):
    """A peer key in its printed form, refused while parsing unless it is one."""

    def fromString(self, inString: bytes) -> PeerKey:
        try:
            return PeerKey.parse(super().fromString(inString))
        except (BadKey, UnicodeDecodeError) as e:
            raise MalformedSignal(str(e)) from None

    def toString(self, inObject: PeerKey) -> bytes:
        return super().toString(inObject.text)  # type: ignore[no-any-return]


class _SignalArgument(amp.Argument):
    """An L{Offer} or L{Answer} as JSON."""

    what = "signal"
    parse: Callable[[object], Offer | Answer]
    """The value's C{from_json}: it raises C{ValueError} for anything malformed."""

    def fromString(self, inString: bytes) -> Offer | Answer:
        try:
            return self.parse(_loads(inString))
        except ValueError as e:
            raise MalformedSignal(f"malformed {self.what}: {e}") from None

    def toString(self, inObject: Offer | Answer) -> bytes:
        return _dumps(inObject)


class OfferArgument(_SignalArgument):
    """An L{Offer} as JSON."""

    what = "offer"
    parse = staticmethod(Offer.from_json)


class AnswerArgument(_SignalArgument):
    """An L{Answer} as JSON."""

    what = "answer"
    parse = staticmethod(Answer.from_json)


class Challenge(amp.Command):
    """Ask for a fresh nonce to sign, and the server's id, before registering or releasing."""

    arguments = []
    response = [(b"server", amp.String()), (b"nonce", amp.String())]


_REGISTRATION_ERRORS: dict[type[Exception], bytes] = {
    DuplicateName: b"DUPLICATE_NAME",
    RegistrationRefused: b"REGISTRATION_REFUSED",
    MalformedSignal: MALFORMED,
}


class Register(amp.Command):
    """
    Bind C{name} to C{key} (if it is free, or bound to C{key} already) and
    make this connection reachable as both, proven by C{signature} over
    the last challenge.
    """

    arguments = [(b"name", NameArgument()), (b"key", KeyArgument()), (b"signature", amp.String())]
    response = []
    errors = _REGISTRATION_ERRORS


class Release(amp.Command):
    """Unbind C{name} from C{key}, proven by C{signature} over the last challenge."""

    arguments = [(b"name", NameArgument()), (b"key", KeyArgument()), (b"signature", amp.String())]
    response = []
    errors = _REGISTRATION_ERRORS


class Lookup(amp.Command):
    """The key C{name} is bound to, for a peer to pin before it connects."""

    arguments = [(b"name", NameArgument())]
    response = [(b"key", KeyArgument())]
    errors = {UnknownPeer: b"UNKNOWN_PEER", MalformedSignal: MALFORMED}


class Connect(amp.Command):
    """Relay C{offer} to the peer it is for; its answer comes back."""

    arguments = [(b"offer", OfferArgument())]
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
    _broken = False
    """Set once a box could not be dispatched: the rest of the stream is not parsed."""

    # AMP logs every connection made and lost at info.  The server and the
    # client log what an operator needs (who registered, who left), so the
    # connection itself is debug detail here: these skip AMP's own two
    # methods, which add nothing but those log lines.

    def makeConnection(self, transport: ITransport) -> None:
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionMade(self) -> None:
        super().connectionMade()
        # Each box is a whole question or answer, written at once: Nagle's
        # algorithm would only hold one back for the peer's delayed ACK of
        # the one before (40 ms on Linux), in the middle of a set-up.
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)
        self.log.debug("Connection with {peer} made", peer=peer_address(self))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.log.debug("Connection with {peer} lost", peer=peer_address(self))
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None

    def dataReceived(self, data: bytes) -> None:
        """
        Plain AMP lets the exception of a box it cannot dispatch (neither a
        command, an answer nor an error; a command name that is not ASCII)
        escape into the reactor, which logs a traceback and drops the
        connection.  Here the connection is dropped all the same, the box
        counted as malformed, and nothing reaches the reactor.
        """
        if self._broken:
            return
        try:
            super().dataReceived(data)
        except Exception as e:
            self._broken = True
            self.log.debug(
                "Dropped the connection with {peer}: malformed box: {error}",
                peer=peer_address(self),
                error=_describe(e),
            )
            self.malformed_refused(b"")
            if self.transport is not None:
                self.transport.loseConnection()

    def unhandledError(self, failure: Failure) -> None:
        """
        A refusal (a C{RemoteAmpError}) of a command sent without C{_ask}
        has nobody to go to.  Plain AMP logs it as a failure and drops the
        connection; a refusal is not a failure, so here it is logged at
        debug and the connection kept.  Anything else is still AMP's.
        """
        if failure.check(amp.RemoteAmpError):
            self.log.debug(
                "Refused a command {peer} wanted no answer to: {error}",
                peer=peer_address(self),
                error=failure.value,
            )
            return
        super().unhandledError(failure)

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
