"""
The peer connection: what an application holds once a hole is punched.

A L{PeerConnection} carries the application's own datagrams to one peer,
over the shared socket, each encrypted and authenticated with
ChaCha20-Poly1305 under the session's key for its direction
(L{twisted_nat.control.encrypt_frame}).  The application gives it a
C{DatagramProtocol}; the protocol's transport writes to the peer, and its
C{datagramReceived} sees only payloads that the peer sent under this
session, each once.

What is protected: the payload's confidentiality and integrity, that a
frame comes from the peer (not from an attacker spoofing its address, nor
reflected from ourselves), and that it is new (a replayed frame, or one
older than the replay window, is dropped).  What is not: the size and
timing of every datagram, its sequence number, the addresses and ports of
both ends, and loss or reordering, which the application sees as UDP's.

A connection sends and is found through its router
(L{twisted_nat.connection.AppDataRouter}), which it sees only as a
L{Router}, so that this module does not depend on the router's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IUDPTransport
from twisted.internet.protocol import AbstractDatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from twisted_nat import control
from twisted_nat.address import Address, format_address
from twisted_nat.bases import SHARED, Base, BaseRegistry
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.ciphers import CipherCache
from twisted_nat.control import ReplayWindow, SessionKeys
from twisted_nat.errors import TwistedNATError
from twisted_nat.keepalive import KeepAliveMachine, LinkQuality, LivenessChecks, PathState
from twisted_nat.trust.keys import PeerKey

PathKey = tuple[Base, Address]


class ConnectionClosed(TwistedNATError):
    """The peer connection was closed; nothing more can be sent on it."""


class SequenceExhausted(ConnectionClosed):
    """
    The connection sent its last sequence number under its keys: each is a
    nonce, so nothing more can be sent until a new punch rebinds it with
    new keys.
    """


class StreamOpener(Protocol):
    """The streams of a connection (L{twisted_nat.streams}), as the connection sees them."""

    def open_stream(self, protocol: IProtocol) -> Deferred[IProtocol]: ...

    def send_datagram(self, data: bytes) -> None: ...


@attrs.define
class RouterStats:
    received: int = 0
    delivered: int = 0
    dropped_unknown_peer: int = 0
    dropped_bad_tag: int = 0
    dropped_replay: int = 0
    relayed_bytes_sent: int = 0
    """Bytes of the frames sent on relayed paths (TURN's own framing aside)."""
    relayed_bytes_received: int = 0
    """Bytes of the frames delivered from relayed paths."""


class Router(Protocol):
    """What a connection needs of the router that carries its frames."""

    stats: RouterStats
    ciphers: CipherCache
    bases: BaseRegistry

    def add(self, connection: PeerConnection) -> None: ...

    def remove(self, connection: PeerConnection) -> None: ...

    def send(self, frame: bytes, address: Address, base: Base = ...) -> None: ...

    def getHost(self) -> Any: ...


@implementer(IUDPTransport)
class _ConnectionTransport:
    """The transport the application's protocol sees: it reaches one peer only."""

    def __init__(self, connection: PeerConnection) -> None:
        self._connection = connection

    def write(self, packet: bytes, addr: Address | None = None) -> None:
        self._connection.write(packet)

    def connect(self, host: str, port: int) -> None:
        raise RuntimeError("a peer connection is already bound to its peer")

    def getHost(self) -> Any:
        return self._connection.router.getHost()

    def stopListening(self) -> None:
        self._connection.close()

    loseConnection = stopListening

    def setBroadcastAllowed(self, enabled: bool) -> None:
        raise RuntimeError("a peer connection cannot broadcast")

    def getBroadcastAllowed(self) -> bool:
        return False


class PeerConnection:
    """
    One encrypted and authenticated UDP path to one peer.

    @ivar peer: the peer's name, when it came through a rendezvous.
    @ivar peer_key: the peer's key, which the session's handshake proved.
    @ivar remote: the peer's candidate in use (its kind says host,
        server-reflexive, peer-reflexive or relayed).
    @ivar local_kind: which of our candidates the peer reached, if known.
    @ivar setup_time: seconds from the start of punching to the connection.
    @ivar base: which base of ours the path leaves from.
    @ivar relayed: whether the path goes through a TURN relay.
    @ivar peer_nat: the peer's NAT, as its last session's hint named it, or None.
    """

    log = Logger()

    def __init__(
        self,
        router: Router,
        keys: SessionKeys,
        remote: Candidate,
        local_kind: CandidateType | None = None,
        rtt: float | None = None,
        setup_time: float = 0.0,
        peer: str | None = None,
        base: Base = SHARED,
        relayed: bool = False,
        peer_key: PeerKey | None = None,
    ) -> None:
        self.router = router
        self.peer_key = peer_key
        self.base = base
        self.relayed = relayed
        self.keys = keys
        self.remote = remote
        self.local_kind = local_kind
        self.rtt = rtt
        self.setup_time = setup_time
        self.peer = peer
        self.peer_nat: str | None = None
        self.protocol: AbstractDatagramProtocol | None = None
        self.keepalive: KeepAliveMachine | None = None
        self.liveness: LivenessChecks | None = None
        """The path's liveness checks, while keep-alive runs them."""
        self.reconnecting = False
        """True from a lost path until a new punch rebinds the connection."""
        self._state = "healthy"
        self._state_listeners: list[Callable[[PeerConnection], object]] | None = None
        self.closed = False
        self._sequence = 0
        self._replay = ReplayWindow()
        # Made when someone first waits: most connections are never waited on.
        self._closing: list[Deferred[None]] | None = None
        self._path_listeners: list[Callable[[PeerConnection], object]] | None = None
        self.streams: StreamOpener | None = None
        """QUIC streams to the peer, when the service runs them."""
        router.add(self)

    @property
    def remote_address(self) -> Address:
        return self.remote.address

    @property
    def path(self) -> PathKey:
        return (self.base, self.remote.address)

    @property
    def session_id(self) -> bytes:
        return self.keys.session_id

    def quality(self) -> LinkQuality | None:
        """RTT (smoothed), loss and jitter, while keep-alive runs."""
        return self.keepalive.quality() if self.keepalive is not None else None

    def describe_path(self) -> str:
        local = self.local_kind.value if self.local_kind is not None else "?"
        if self.base is not SHARED:
            local = f"{local} via {self.base}"
        return f"{local} -> {self.remote.kind.value} {format_address(self.remote.address)}"

    def on_path_change(self, listener: Callable[[PeerConnection], object]) -> None:
        """
        Call C{listener} with this connection whenever its path changes: a
        move from a relay to a direct path, or a new punch after a loss.
        An application that cares whether its data is relayed (a relay
        costs the operator bandwidth, and adds latency) learns it here.
        """
        if self._path_listeners is None:
            self._path_listeners = []
        self._path_listeners.append(listener)

    def _path_changed(self) -> None:
        self._tell(self._path_listeners)
        self.state_changed()

    @property
    def state(self) -> str:
        """
        C{"healthy"}; C{"checking"} while nothing authenticated comes back
        and liveness checks are out; C{"reconnecting"} from a lost path to
        a new punch; C{"closed"}.
        """
        if self.closed:
            return "closed"
        if self.reconnecting:
            return "reconnecting"
        if self.liveness is not None and self.liveness.state is PathState.CHECKING:
            return "checking"
        return "healthy"

    def on_state_change(self, listener: Callable[[PeerConnection], object]) -> None:
        """Call C{listener} with this connection whenever its L{state} changes."""
        if self._state_listeners is None:
            self._state_listeners = []
        self._state_listeners.append(listener)

    def state_changed(self, *ignored: object) -> None:
        """Something that L{state} depends on changed: tell the listeners, if it did."""
        state = self.state
        if state != self._state:
            self._state = state
            self._tell(self._state_listeners)

    def _tell(self, listeners: list[Callable[[PeerConnection], object]] | None) -> None:
        for listener in listeners or ():
            try:
                listener(self)
            except Exception:
                self.log.failure("a listener of {peer} failed", peer=self.peer)

    def set_protocol(self, protocol: AbstractDatagramProtocol) -> None:
        """Give the application's protocol the peer: its transport writes there."""
        self.protocol = protocol
        protocol.makeConnection(_ConnectionTransport(self))

    def open_stream(self, protocol: IProtocol) -> Deferred[IProtocol]:
        """
        A reliable, ordered, encrypted stream to the peer (QUIC), with
        C{protocol} connected to it: the Deferred fires with C{protocol}.

        @raise ConnectionClosed: this connection carries no streams.
        """
        if self.streams is None:
            raise ConnectionClosed("streams are not enabled on this connection")
        return self.streams.open_stream(protocol)

    def write(self, data: bytes) -> None:
        """
        Send one datagram to the peer, encrypted and authenticated under
        this session's key for our direction.

        @raise ConnectionClosed: the connection is closed.
        @raise SequenceExhausted: every sequence number of these keys is used.
        """
        if self.closed:
            raise ConnectionClosed("the peer connection is closed")
        if self._sequence >= control.MAX_SEQUENCE:
            raise SequenceExhausted("every sequence number of this session's keys is used")
        cipher = self.router.ciphers.encryptor(self, self.keys)
        self._sequence += 1
        frame = control.encrypt_frame(cipher, self._sequence, data)
        self.router.send(frame, self.remote.address, self.base)
        if self.relayed:
            self.router.stats.relayed_bytes_sent += len(frame)
        if self.keepalive is not None:
            self.keepalive.traffic_sent()
        if self.liveness is not None:
            self.liveness.sent()

    def rebind(
        self,
        keys: SessionKeys,
        remote: Candidate,
        local_kind: CandidateType | None,
        rtt: float | None,
        setup_time: float,
        base: Base = SHARED,
        relayed: bool = False,
    ) -> None:
        """
        A new punch replaced this connection's path and session: send and
        accept there, under the new keys.  The application's protocol stays
        attached; keep-alive starts afresh for the new session.
        """
        self._set_path(remote, local_kind, rtt, base, relayed)
        self.keys = keys
        self.setup_time = setup_time
        self._sequence = 0
        self._replay = ReplayWindow()
        self.router.ciphers.forget(self)
        self.reconnecting = False
        self._path_changed()

    def move(
        self,
        remote: Candidate,
        local_kind: CandidateType | None,
        rtt: float | None,
        base: Base = SHARED,
        relayed: bool = False,
    ) -> None:
        """
        The same session found a better path (a direct one, after a relay):
        send and accept there from now on.  Sequence numbers and the replay
        window go on, since the peer's do too; keep-alive is its owner's to
        restart on the new path.
        """
        self._set_path(remote, local_kind, rtt, base, relayed)
        self._path_changed()

    def _set_path(
        self,
        remote: Candidate,
        local_kind: CandidateType | None,
        rtt: float | None,
        base: Base,
        relayed: bool,
    ) -> None:
        self.router.remove(self)
        if self.keepalive is not None:
            self.keepalive.stop()
            self.keepalive = None
        if self.liveness is not None:
            self.liveness.stop()
            self.liveness = None
        self.remote = remote
        self.local_kind = local_kind
        self.rtt = rtt
        self.base = base
        self.relayed = relayed
        self.router.add(self)

    def frame_received(self, frame: bytes) -> None:
        """
        A frame from the peer's address: decrypt it, then (only once it
        authenticates) check the replay window, and deliver the payload.
        """
        cipher = self.router.ciphers.decryptor(self, self.keys)
        opened = control.decrypt_frame(cipher, frame)
        if opened is None:
            self.router.stats.dropped_bad_tag += 1
            self.log.debug("dropped data failing its tag from {addr}", addr=self.remote.address)
            return
        sequence, payload = opened
        if not self._replay.accept(sequence):
            self.router.stats.dropped_replay += 1
            self.log.debug("dropped replayed data from {addr}", addr=self.remote.address)
            return
        self.router.stats.delivered += 1
        if self.relayed:
            self.router.stats.relayed_bytes_received += len(frame)
        if self.keepalive is not None:
            self.keepalive.traffic_received()
        if self.liveness is not None:
            self.liveness.heard()
        if self.protocol is not None:
            self.protocol.datagramReceived(payload, self.remote.address)

    def close(self) -> None:
        """Close the connection: the router forgets it and the protocol stops."""
        if self.closed:
            return
        self.closed = True
        self.router.remove(self)
        self.router.ciphers.forget(self)
        if self.protocol is not None:
            self.protocol.doStop()
        closing, self._closing = self._closing, None
        for d in closing or ():
            d.callback(None)
        self.state_changed()

    def when_closed(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if self.closed:
            d.callback(None)
        elif self._closing is None:
            self._closing = [d]
        else:
            self._closing.append(d)
        return d
