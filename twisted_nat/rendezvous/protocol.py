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
    server -> client   Superseded(reason)              (no answer; then it closes)

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
connection stays up; a box too large to be ours closes it (L{SignalingAMP}).
Every refusal is one of the exceptions of L{twisted_nat.errors}, mapped to
an AMP error code, so the caller's Deferred fails with the same type the
server raised.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    ISSLTransport,
    ITCPTransport,
    ITransport,
)
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
    RendezvousBusy,
    UnknownPeer,
)
from twisted_nat.rendezvous.bounds import (
    MAX_BOX_KEYS,
    BoundedBoxes,
    ReadGate,
)
from twisted_nat.rendezvous.values import Answer, Offer, check_name
from twisted_nat.trust.keys import PeerKey

MALFORMED = b"MALFORMED"
BUSY = b"BUSY"
_MAX_DESCRIPTION = 200
_MAX_COMMAND = 40

MALFORMED_BOX = "malformed box"
MALFORMED_COMMAND = "malformed command"
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
    RendezvousBusy: BUSY,
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
    errors = {UnknownPeer: b"UNKNOWN_PEER", RendezvousBusy: BUSY, MalformedSignal: MALFORMED}


class Connect(amp.Command):
    """Relay C{offer} to the peer it is for; its answer comes back."""

    arguments = [(b"offer", OfferArgument())]
    response = [(b"answer", AnswerArgument())]
    errors = {
        UnknownPeer: b"UNKNOWN_PEER",
        PeerUnavailable: b"PEER_UNAVAILABLE",
        NotRegistered: b"NOT_REGISTERED",
        RendezvousBusy: BUSY,
        MalformedSignal: MALFORMED,
    }


class DeliverOffer(amp.Command):
    """Sent by the server: another peer's offer, which this peer answers."""

    arguments = [(b"offer", OfferArgument())]
    response = [(b"answer", AnswerArgument())]
    errors = {PeerUnavailable: b"PEER_UNAVAILABLE", MalformedSignal: MALFORMED}


class Superseded(amp.Command):
    """
    Sent by the server, wanting no answer, just before it closes this
    connection: a newer connection registered the same key (at this server
    or at another node of the rendezvous), and offers go there now.
    """

    arguments = [(b"reason", amp.Unicode())]
    requiresAnswer = False


def peer_address(protocol: object) -> str:
    """The far end of C{protocol}'s connection, for log lines."""
    transport = getattr(protocol, "transport", None)
    if transport is None:
        return "(disconnected)"
    address = transport.getPeer()
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


class SignalingAMP(BoundedBoxes, amp.AMP):
    """
    AMP that bounds what one box may hold and survives any bytes.

    A box over L{MAX_BOX_SIZE} bytes or L{MAX_BOX_KEYS} keys, or with a key
    over AMP's 255 bytes, closes the connection: plain AMP would hold a box
    that never ends until memory runs out.  A box that parses but is no
    request or answer of ours (no command, an answer to no question, a
    command name that is not ASCII) is dropped, and the connection stays.
    A request whose arguments cannot be parsed (a missing key, bad UTF-8,
    our own validation) is answered with a C{MALFORMED} error, where plain
    AMP would log a traceback and close the connection: bytes from the
    network are not a bug.  AMP's own C{StartTLS} is not served: TLS is a
    matter of the endpoint.  Each of these calls L{input_refused}, never
    the reactor's "Unhandled Error".  A L{ReadGate} stops reading from a
    peer that does not read its answers, or has too many requests under way.
    """

    log = Logger()
    _gate: ReadGate | None = None

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
        transport: Any = self.transport
        if hasattr(transport, "pauseProducing"):
            self._gate = ReadGate(transport)
            # Not over TLS: it holds our writes back until its handshake is
            # done, pausing its producer meanwhile, and the handshake needs
            # the reading that pausing would stop.
            if (
                IConsumer.providedBy(transport)
                and IPushProducer.providedBy(transport)
                and not ISSLTransport.providedBy(transport)
            ):
                transport.registerProducer(self._gate, True)
        self.log.debug("Connection with {peer} made", peer=peer_address(self))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.log.debug("Connection with {peer} lost", peer=peer_address(self))
        if self._gate is not None:
            self._gate.stopProducing()
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None

    def dispatchCommand(self, box: amp.AmpBox) -> Deferred[Any]:
        """Run the responder, counting it under way with the L{ReadGate} until answered."""
        answered: Deferred[Any] = super().dispatchCommand(box)
        gate = self._gate
        if gate is not None and not answered.called:
            gate.started()

            def done(result: object) -> object:
                gate.finished()
                return result

            answered.addBoth(done)
        return answered

    # --- what a box says ---

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        try:
            super().ampBoxReceived(box)
        except Exception as e:
            self.input_refused(MALFORMED_BOX, _describe_box(box, e))

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
        try:
            name.decode("ascii")
        except UnicodeDecodeError:
            return self._refusing_responder(name, "the command name is not ASCII")
        if name == b"StartTLS":
            return None
        responder = super().locateResponder(name)
        if responder is None:
            return None

        def guarded(box: amp.AmpBox) -> Any:
            try:
                return responder(box)
            except Exception as e:
                return self._refusing_responder(name, _describe(e))(box)

        return guarded

    def _refusing_responder(self, name: bytes, why: str) -> Callable[[amp.AmpBox], Any]:
        def refuse(box: amp.AmpBox) -> Any:
            command = name.decode("ascii", "replace")[:_MAX_COMMAND]
            self.input_refused(MALFORMED_COMMAND, f"{command}: {why}")
            return defer.fail(amp.RemoteAmpError(MALFORMED, why))

        return refuse

    def input_refused(self, reason: str, detail: str) -> None:
        """
        Called for every box refused, C{reason} one of L{OVERSIZED},
        L{MALFORMED_BOX} and L{MALFORMED_COMMAND}, for counters and
        logs; C{detail} is at most a few hundred characters.
        """
        self.log.debug(
            "Refused input from {peer} ({reason}): {detail}",
            peer=peer_address(self),
            reason=reason,
            detail=detail,
        )

    def forget_question(self, question: Deferred[Any]) -> None:
        """
        Stop waiting for the answer to C{question}, a C{callRemote} that
        timed out: AMP would keep it until the connection ends, however
        many pile up.  An answer that comes later is a box refused.
        """
        outstanding: dict[bytes, Deferred[Any]] = self._outstandingRequests
        for tag, waiting in list(outstanding.items()):
            if waiting is question:
                del outstanding[tag]
                return


def _describe_box(box: amp.AmpBox, error: BaseException) -> str:
    keys = b", ".join(key[:_MAX_COMMAND] for key in list(box)[:MAX_BOX_KEYS])
    return f"{_describe(error)} in a box with keys {keys.decode('ascii', 'replace')}"
