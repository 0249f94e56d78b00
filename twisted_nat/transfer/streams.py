"""
The two kinds of stream protocol of a transfer, for both sides: a control
stream carrying messages, and the sender's file producer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_nat.transfer.protocol import Framer, Message, encode

CHUNK = 1 << 16
"""Bytes of a file read and written at once."""
CHUNKS_PER_TURN = 16
"""Chunks written before the reactor gets to run again."""


@implementer(IHalfCloseableProtocol)
class MessageStream(Protocol):
    """
    A stream of messages: each one whole to C{received}; the end of the
    stream, or a broken message (which aborts the stream), to C{ended}.
    """

    transport: Any = None
    """A L{twisted_nat.streams.StreamTransport} (half-close, abort), once connected."""

    def __init__(
        self,
        received: Callable[[MessageStream, Message], object],
        ended: Callable[[MessageStream, Failure | None], object],
    ) -> None:
        self._received = received
        self._ended = ended
        self._framer = Framer()
        self._over = False
        self.raw: Callable[[bytes], object] | None = None
        """Once set (a data stream after its header), bytes go here, not to the framer."""
        self.peer_ended = False
        self.index: int | None = None
        """The file a data stream carries."""

    def send(self, message: Message) -> None:
        if self.transport is not None and not self._over:
            self.transport.write(encode(message))

    def dataReceived(self, data: bytes) -> None:
        if self._over:
            return
        if self.raw is not None:
            self.raw(data)
            return
        self._framer.feed(data)
        try:
            while not self._over and self.raw is None:
                message = self._framer.next()
                if message is None:
                    return
                self._received(self, message)
        except Exception:
            # A broken message (TransferProtocolError), or a bug: never into the stream's driver.
            self._finish(Failure())
            if self.transport is not None:
                self.transport.abortConnection()
            return
        if self.raw is not None and not self._over:
            rest = self._framer.take_rest()
            if rest:
                self.raw(rest)

    def readConnectionLost(self) -> None:
        """The peer ended its side: the stream's content is whole."""
        self.peer_ended = True
        self._finish(None)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._finish(reason)

    def _finish(self, reason: Failure | None) -> None:
        if not self._over:
            self._over = True
            self._ended(self, reason)


@implementer(IPushProducer)
class FileProducer:
    """
    Writes C{size} bytes of the file at C{path}, from C{offset}, to a
    stream, as fast as the stream's flow control lets it (it pauses us
    while too much is unacknowledged), then ends the stream.  Never holds
    more than one chunk of the file.  A read that fails aborts the stream
    and goes to C{failed}.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        transport: Any,
        path: str,
        offset: int,
        size: int,
        moved: Callable[[int], object],
        failed: Callable[[OSError], object],
    ) -> None:
        self._reactor = reactor
        self._transport = transport
        self._left = size - offset
        self._moved = moved
        self._failed = failed
        self._paused = False
        self._stopped = False
        self._scheduled = False
        self._file = open(path, "rb")  # noqa: SIM115 (closed when done or stopped)
        self._file.seek(offset)

    def start(self) -> None:
        self._transport.registerProducer(self, True)
        self._schedule()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self._stopped = True
        self._file.close()

    def _schedule(self) -> None:
        if not self._scheduled and not self._stopped:
            self._scheduled = True
            self._reactor.callLater(0, self._pump)

    def _pump(self) -> None:
        self._scheduled = False
        for _ in range(CHUNKS_PER_TURN):
            if self._paused or self._stopped:
                return
            try:
                chunk = self._file.read(min(CHUNK, self._left)) if self._left > 0 else b""
            except OSError as e:
                self.stopProducing()
                self._transport.abortConnection()
                self._failed(e)
                return
            if not chunk:
                self._done()
                return
            self._left -= len(chunk)
            self._transport.write(chunk)
            self._moved(len(chunk))
        self._schedule()

    def _done(self) -> None:
        """All sent (or the file shrank: the receiver will find it short)."""
        self._stopped = True
        self._file.close()
        self._transport.unregisterProducer()
        self._transport.loseWriteConnection()
