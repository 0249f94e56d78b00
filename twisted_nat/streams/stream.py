"""
One QUIC stream as a Twisted transport.

A L{StreamTransport} is what an ordinary Twisted protocol (AMP, HTTP, a
line protocol) gets as its transport: C{write}, C{writeSequence},
C{loseConnection}, half-close (C{loseWriteConnection}, and
C{readConnectionLost} / C{writeConnectionLost} for protocols providing
C{IHalfCloseableProtocol}), C{abortConnection}, and flow control both
ways: as an C{IConsumer} it pauses a registered producer while more than
the high-water mark of its data waits for the peer's acknowledgement, and
resumes it below the low-water mark; as an C{IPushProducer} it holds the
peer's data back from a protocol that paused it.
"""

from __future__ import annotations

from typing import Any, Protocol

import attrs
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IHalfCloseableProtocol,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_nat.trust.keys import PeerKey


@implementer(IAddress)
@attrs.frozen
class PeerAddress:
    """Where a stream goes: a peer, by its name and key (C{getPeer}; ours is C{getHost})."""

    name: str | None
    key: PeerKey | None
    stream_id: int = 0

    def __str__(self) -> str:
        who = self.name or (self.key.short if self.key else "?")
        return f"peer:{who} stream {self.stream_id}"


class StreamOwner(Protocol):
    """What a stream needs of the QUIC connection that carries it."""

    def stream_write(self, stream_id: int, data: bytes, end: bool) -> None: ...

    def stream_abort(self, stream_id: int) -> None: ...

    def stream_stop_reading(self, stream_id: int) -> None: ...

    def stream_unacknowledged(self, stream_id: int) -> int: ...

    def stream_done(self, stream_id: int) -> None: ...


@implementer(ITransport, IConsumer, IPushProducer)
class StreamTransport:
    """
    The transport of one bidirectional QUIC stream.

    @ivar stream_id: the QUIC stream id.
    """

    disconnecting = False

    def __init__(
        self,
        owner: StreamOwner,
        stream_id: int,
        protocol: IProtocol,
        host: PeerAddress,
        peer: PeerAddress,
        high_water: int,
        low_water: int,
    ) -> None:
        self.stream_id = stream_id
        self.protocol = protocol
        self._owner = owner
        self._host = host
        self._peer = peer
        self._high = high_water
        self._low = low_water
        self.write_closed = False
        self.read_closed = False
        self.lost = False
        self.producer: Any = None
        self._streaming = False
        self.producer_paused = False
        self._reading_paused = False
        self._held: list[bytes] = []
        self._held_end = False

    # --- ITransport ---

    def write(self, data: bytes) -> None:
        if self.write_closed or self.lost or not data:
            return
        self._owner.stream_write(self.stream_id, bytes(data), False)
        self.check_flow()

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        """Send our end of the stream (FIN); the peer may go on sending."""
        if self.write_closed or self.lost:
            return
        self.write_closed = True
        self._owner.stream_write(self.stream_id, b"", True)
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is not None:
            half.writeConnectionLost()
        self._maybe_done()

    def loseConnection(self) -> None:
        """End our side, and read no more: the protocol is told at once, as with TCP."""
        if self.lost:
            return
        self.disconnecting = True
        if not self.write_closed:
            self.write_closed = True
            self._owner.stream_write(self.stream_id, b"", True)
        if not self.read_closed:
            self.read_closed = True
            self._owner.stream_stop_reading(self.stream_id)
        self.connection_lost(Failure(ConnectionDone("the stream was closed")))

    def abortConnection(self) -> None:
        """Reset the stream both ways: what was not delivered is lost."""
        if self.lost:
            return
        self._owner.stream_abort(self.stream_id)
        self.connection_lost(Failure(ConnectionDone("the stream was aborted")))

    def getPeer(self) -> PeerAddress:
        return self._peer

    def getHost(self) -> PeerAddress:
        return self._host

    # --- IConsumer: pausing whoever writes to us ---

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is registered already")
        self.producer, self._streaming = producer, streaming
        self.producer_paused = False
        if not streaming:
            producer.resumeProducing()
        self.check_flow()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.producer_paused = False

    def check_flow(self) -> None:
        """Pause the producer above the high-water mark, resume it below the low one."""
        producer = self.producer
        if producer is None or self.lost:
            return
        waiting = self._owner.stream_unacknowledged(self.stream_id)
        if not self.producer_paused and waiting > self._high:
            self.producer_paused = True
            if self._streaming:
                producer.pauseProducing()
        elif self.producer_paused and waiting < self._low:
            self.producer_paused = False
            producer.resumeProducing()

    # --- IPushProducer: the protocol pausing us ---

    def pauseProducing(self) -> None:
        self._reading_paused = True

    def resumeProducing(self) -> None:
        self._reading_paused = False
        held, self._held = self._held, []
        for data in held:
            if self.lost:
                return
            self.protocol.dataReceived(data)
        if self._held_end and not self._reading_paused:
            self._held_end = False
            self.peer_ended()

    def stopProducing(self) -> None:
        self.abortConnection()

    # --- from the QUIC connection ---

    def data_received(self, data: bytes, end: bool) -> None:
        if self.lost or self.read_closed:
            return
        if data:
            if self._reading_paused:
                self._held.append(data)
            else:
                self.protocol.dataReceived(data)
        if end:
            if self._reading_paused:
                self._held_end = True
            else:
                self.peer_ended()

    def peer_ended(self) -> None:
        """The peer sent its FIN: a half-closeable protocol is told; another loses the stream."""
        if self.lost or self.read_closed:
            return
        self.read_closed = True
        half = IHalfCloseableProtocol(self.protocol, None)
        if half is None:
            self.loseConnection()
            return
        half.readConnectionLost()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.read_closed and self.write_closed and not self.lost:
            self.connection_lost(Failure(ConnectionDone("the stream ended both ways")))

    def connection_lost(self, reason: Failure) -> None:
        """The stream is over: tell the protocol once, and the owner to forget it."""
        if self.lost:
            return
        self.lost = True
        self.write_closed = self.read_closed = True
        self._held = []
        producer, self.producer = self.producer, None
        if producer is not None and self._streaming:
            producer.stopProducing()
        self._owner.stream_done(self.stream_id)
        self.protocol.connectionLost(reason)
