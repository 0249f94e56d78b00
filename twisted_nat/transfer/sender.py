"""
The sending side of a transfer: offer the files on a control stream,
then send each over a stream of its own, L{PARALLEL} at once, each from
where the receiver's part file ends if its bytes are ours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.errors import TransferProtocolError
from twisted_nat.transfer.disk import hash_file
from twisted_nat.transfer.protocol import (
    Abort,
    Accept,
    DataHeader,
    Failed,
    FileEntry,
    Message,
    Offer,
    Received,
    Refuse,
)
from twisted_nat.transfer.report import Outcome, Reporter
from twisted_nat.transfer.sources import Source
from twisted_nat.transfer.streams import FileProducer, MessageStream

PARALLEL = 4
"""Files sent at once, each on its own stream, until the receiver has checked it."""

OpenStream = Callable[[IProtocol], Deferred[IProtocol]]
InThread = Callable[..., Deferred[Any]]


class Sender:
    """
    Sends C{sources} (whose SHA-256 are C{hashes}) over streams opened by
    C{open_stream}; L{run} fires with the L{Outcome}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        sources: Sequence[Source],
        hashes: Sequence[str],
        open_stream: OpenStream,
        in_thread: InThread,
        report: Reporter,
        parallel: int = PARALLEL,
    ) -> None:
        self._reactor = reactor
        self._sources = list(sources)
        self.offer = Offer(
            tuple(FileEntry(s.name, s.size, h) for s, h in zip(sources, hashes, strict=True))
        )
        self._open_stream = open_stream
        self._in_thread = in_thread
        self._report = report
        self._parallel = parallel
        self._control = MessageStream(self._message, self._ended)
        self._accepted = False
        self._queue: list[int] = []
        self._offsets: dict[int, int] = {}
        self._in_flight: set[int] = set()
        self._left: set[int] = set()
        self._received = 0
        self._failures: list[str] = []
        self._done: Deferred[Outcome] = Deferred()

    def run(self) -> Deferred[Outcome]:
        opening = self._open_stream(self._control)
        opening.addCallbacks(lambda _: self._control.send(self.offer), self._cannot_open)
        return self._done

    def _cannot_open(self, failure: Failure) -> None:
        self._finish(f"cannot open a stream to the receiver: {failure.value}")

    # --- the control stream ---

    def _message(self, stream: MessageStream, message: Message) -> None:
        if stream is not self._control:
            raise TransferProtocolError("a message on a data stream")
        match message:
            case Accept() if not self._accepted:
                self._accept(message)
            case Refuse(reason) if not self._accepted:
                self._finish(f"refused: {reason}")
            case Received(index) if index in self._left:
                self._verdict(index, None)
            case Failed(index, reason) if index in self._left:
                self._verdict(index, reason)
            case Abort(reason):
                self._finish(f"the receiver stopped: {reason}")
            case _:
                raise TransferProtocolError(f"unexpected {type(message).__name__} message")

    def _accept(self, accept: Accept) -> None:
        count = len(self._sources)
        if any(i >= count for i in accept.complete) or any(
            h.index >= count or h.offset > self._sources[h.index].size for h in accept.have
        ):
            raise TransferProtocolError("an answer about files we did not offer")
        self._accepted = True
        complete = set(accept.complete)
        self._received = len(complete)
        self._left = set(range(count)) - complete
        self._report.accepted(sum(self._sources[i].size for i in complete))
        checks = [
            self._in_thread(hash_file, self._sources[h.index].path, h.offset).addCallback(
                self._check_prefix, h.index, h.offset, h.sha256
            )
            for h in accept.have
            if h.index in self._left
        ]
        self._queue = sorted(self._left)
        gatherResults(checks, consumeErrors=True).addCallbacks(
            lambda _: self._next(), self._unreadable
        )
        if not self._left:
            self._all_done()

    def _check_prefix(self, digest: Any, index: int, offset: int, expected: str) -> None:
        """The receiver holds C{offset} bytes: resume there if they are ours."""
        self._offsets[index] = offset if digest.hexdigest() == expected else 0

    def _unreadable(self, failure: Failure) -> None:
        error = getattr(failure.value, "subFailure", failure).value
        self._abort(f"cannot read a file: {error}")

    # --- the files ---

    def _next(self) -> None:
        while self._queue and len(self._in_flight) < self._parallel and not self._done.called:
            index = self._queue.pop(0)
            self._in_flight.add(index)
            stream = MessageStream(self._message, self._ended)
            stream.index = index
            opening = self._open_stream(stream)
            opening.addCallbacks(lambda _, s=stream: self._start(s), self._cannot_open)

    def _start(self, stream: MessageStream) -> None:
        assert stream.index is not None and stream.transport is not None
        index = stream.index
        source = self._sources[index]
        offset = self._offsets.get(index, 0)
        self._report.resumed(source.name, offset, offset)
        try:
            producer = FileProducer(
                self._reactor,
                stream.transport,
                source.path,
                offset,
                source.size,
                self._moved,
                lambda e: self._abort(f"cannot read {source.name}: {e.strerror or e}"),
            )
        except OSError as e:
            self._abort(f"cannot read {source.name}: {e.strerror}")
            return
        stream.send(DataHeader(index, offset))
        producer.start()

    def _moved(self, count: int) -> None:
        self._report.moved(count)

    def _verdict(self, index: int, why: str | None) -> None:
        self._left.discard(index)
        self._in_flight.discard(index)
        source = self._sources[index]
        if why is None:
            self._received += 1
        else:
            self._failures.append(f"{source.name}: {why}")
        self._report.file_done(source.name, source.size, why)
        if self._left:
            self._next()
        else:
            self._all_done()

    def _all_done(self) -> None:
        failed = None
        if self._failures:
            failed = f"{len(self._failures)} files failed: {self._failures[0]}"
        self._finish(failed)
        if self._control.transport is not None:
            self._control.transport.loseConnection()

    # --- ends ---

    def _abort(self, reason: str) -> None:
        self._control.send(Abort(f"the sender {reason}"))
        self._finish(reason)
        if self._control.transport is not None:
            self._control.transport.loseConnection()

    def _ended(self, stream: MessageStream, reason: Failure | None) -> None:
        if stream is self._control:
            why = "the receiver went away"
            if reason is not None and isinstance(reason.value, TransferProtocolError):
                why = f"the receiver broke the protocol: {reason.value}"
            elif reason is not None and not stream.peer_ended:
                why = f"the receiver went away: {reason.value}"
            self._finish(why)
        elif stream.transport is not None and stream.peer_ended:
            stream.transport.loseConnection()

    def _finish(self, error: str | None) -> None:
        if self._done.called:
            return
        files = len(self._sources)
        if error is not None and self._accepted and self._left:
            error += (
                f" ({self._received} of {files} files arrived;"
                " run the same command again to resume)"
            )
        self._done.callback(Outcome(files, self._received, error))
