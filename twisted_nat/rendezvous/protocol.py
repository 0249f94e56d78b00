"""
The rendezvous protocol: three AMP commands over one TCP (or TLS)
connection from each peer to the server.

    client -> server   Register(name)          -> {}
    client -> server   Connect(to, offer)      -> {answer}
    server -> client   DeliverOffer(offer)     -> {answer}

The server relays a C{Connect} to the connection registered as C{to} as a
C{DeliverOffer}, and that peer's answer back as the C{Connect}'s answer.
AMP already pairs every answer with its question and fails whatever is
outstanding when a connection drops, which is all the bookkeeping a relay
needs.

Offers and answers travel as JSON in one AMP value each, and their NAT
hint, if any, as JSON in a key of its own beside it (C{offer-nat},
C{answer-nat}): AMP skips keys it does not know, where an offer's JSON
may have none, so peers and servers from before hints read the offer and
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

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import IReactorTime
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
    RendezvousError,
    RendezvousUnavailable,
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


def _peer_of(protocol: amp.AMP) -> str:
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


class _SignalingAMP(amp.AMP):
    """
    AMP that answers a box it cannot parse with a C{MALFORMED} error.

    Plain AMP treats an exception while parsing arguments (a missing key,
    bad UTF-8, our own validation) as a bug in the responder: it logs a
    traceback and closes the connection.  Bytes from the network are not a
    bug, so here they are a refusal like any other.
    """

    log = Logger()

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
                    peer=_peer_of(self),
                    error=_describe(e),
                )
                self.malformed_refused(name)
                return defer.fail(amp.RemoteAmpError(MALFORMED, _describe(e)))

        return guarded

    def malformed_refused(self, command: bytes) -> None:
        """Called for every box refused as malformed; for counters."""


def _translate(failure: Failure) -> Failure:
    """
    A failed call as one of our exceptions: a dropped connection means the
    server is unavailable, whatever the operating system called it.
    """
    if failure.check(RendezvousError):
        return failure
    if failure.check(ConnectionClosed):
        return Failure(RendezvousUnavailable("the connection to the rendezvous server was lost"))
    if failure.check(amp.AmpError):  # an error code we do not know, an unknown command
        return Failure(RendezvousError(f"the rendezvous server failed: {failure.value}"))
    return failure


# --- the server's side ---


@attrs.define
class ServerStats:
    """Counters of one rendezvous server."""

    registrations: int = 0
    offers_relayed: int = 0
    relays_failed: int = 0
    refused: int = 0
    refused_malformed: int = 0


class PeerDirectory:
    """
    The names registered at one server and the connections holding them.

    A name belongs to a live connection and to nothing else: when the
    connection drops, the name is free again.
    """

    def __init__(self, reactor: IReactorTime, relay_timeout: float) -> None:
        self.reactor = reactor
        self.relay_timeout = relay_timeout
        self.peers: dict[str, RendezvousServerProtocol] = {}
        self.connections: set[RendezvousServerProtocol] = set()
        self.stats = ServerStats()

    def release(self, connection: RendezvousServerProtocol) -> None:
        name = connection.name
        if name is not None and self.peers.get(name) is connection:
            del self.peers[name]


class RendezvousServerProtocol(_SignalingAMP):
    """One peer's connection to the rendezvous server."""

    log = Logger()

    def __init__(self, directory: PeerDirectory) -> None:
        super().__init__()
        self.directory = directory
        self.name: str | None = None
        self.closed: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        super().connectionMade()
        self.directory.connections.add(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        peer = _peer_of(self)
        self.directory.connections.discard(self)
        if self.name is not None and self.directory.peers.get(self.name) is self:
            self.directory.release(self)
            self.log.info("Peer {name} ({peer}) disconnected", name=self.name, peer=peer)
        super().connectionLost(reason)
        self.closed.callback(None)

    def malformed_refused(self, command: bytes) -> None:
        self.directory.stats.refused_malformed += 1

    def _refuse(self, error: RendezvousError) -> RendezvousError:
        self.directory.stats.refused += 1
        return error

    @Register.responder
    def register(self, name: str) -> dict[str, object]:
        holder = self.directory.peers.get(name)
        if holder is not None and holder is not self:
            raise self._refuse(DuplicateName(f"{name!r} is registered by another connection"))
        self.directory.release(self)
        self.directory.peers[name] = self
        self.name = name
        self.directory.stats.registrations += 1
        self.log.info(
            "Peer {name} registered from {peer}",
            name=name,
            peer=_peer_of(self),
        )
        return {}

    @Connect.responder
    def connect(self, to: str, offer: Offer) -> Deferred[dict[str, object]]:
        if self.name is None:
            raise self._refuse(NotRegistered("register a name before sending offers"))
        if offer.from_name != self.name:
            raise self._refuse(
                MalformedSignal(
                    f"the offer claims to be from {offer.from_name!r}, "
                    f"but this connection is {self.name!r}"
                )
            )
        target = self.directory.peers.get(to)
        if target is None:
            raise self._refuse(UnknownPeer(f"no peer is registered as {to!r}"))
        timeout = self.directory.relay_timeout
        relay: Deferred[dict[str, Any]] = target.callRemote(DeliverOffer, offer=offer)
        relay.addTimeout(timeout, self.directory.reactor)

        def answered(response: dict[str, Any]) -> dict[str, object]:
            answer = response["answer"]
            if answer.session_id != offer.session_id:
                raise PeerUnavailable(f"{to} answered another session")
            self.directory.stats.offers_relayed += 1
            self.log.debug("Relayed an offer from {source} to {to}", source=self.name, to=to)
            return {"answer": answer}

        def failed(failure: Failure) -> Failure:
            self.directory.stats.relays_failed += 1
            if failure.check(PeerUnavailable):
                error = failure.value
            elif failure.check(defer.TimeoutError):
                error = PeerUnavailable(f"{to} did not answer within {timeout:g} s")
            elif failure.check(MalformedSignal):
                error = PeerUnavailable(f"{to} sent a malformed answer")
            elif failure.check(ConnectionClosed):
                error = PeerUnavailable(f"{to} went away before answering")
            else:
                error = PeerUnavailable(f"{to} could not answer")
            self.log.info(
                "Could not relay an offer from {source} to {to}: {error}",
                source=self.name,
                to=to,
                error=failure.value,
            )
            return Failure(error)

        return relay.addCallback(answered).addErrback(failed)


# --- the peer's side ---


class RendezvousClientProtocol(_SignalingAMP):
    """
    A peer's connection to the rendezvous server.

    It only speaks the protocol; deciding when to register, answering
    offers and reconnecting belong to the owner, which it tells about its
    connection through C{on_connected} and C{on_lost}.
    """

    def __init__(
        self,
        answer_offer: Callable[[Offer], Deferred[Answer]],
        on_connected: Callable[[RendezvousClientProtocol], None],
        on_lost: Callable[[RendezvousClientProtocol, Failure], None],
    ) -> None:
        super().__init__()
        self._answer_offer = answer_offer
        self._on_connected = on_connected
        self._on_lost = on_lost
        self.connected = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connected = True
        self._on_connected(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected = False
        # The owner hears first, so that whoever reacts to a call failing
        # below already finds us disconnected.
        self._on_lost(self, reason)
        super().connectionLost(reason)

    @DeliverOffer.responder
    def deliver_offer(self, offer: Offer) -> Deferred[dict[str, object]]:
        def response(answer: Answer) -> dict[str, object]:
            return {"answer": answer}

        return self._answer_offer(offer).addCallback(response)

    def register(self, name: str) -> Deferred[None]:
        """Register C{name}; fails with our exceptions only."""
        d = self.callRemote(Register, name=name)
        d.addCallback(lambda response: None)
        return d.addErrback(_translate)  # type: ignore[no-any-return]

    def connect(self, to: str, offer: Offer) -> Deferred[Answer]:
        """Send C{offer} to C{to} through the server; fails with our exceptions only."""

        def answered(response: dict[str, Any]) -> Answer:
            answer = response["answer"]
            assert isinstance(answer, Answer)
            if answer.session_id != offer.session_id:
                raise MalformedSignal("the answer is for another session")
            return answer

        d = self.callRemote(Connect, to=to, offer=offer)
        return d.addCallback(answered).addErrback(_translate)  # type: ignore[no-any-return]
