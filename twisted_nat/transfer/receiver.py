"""
The receiving side of a transfer: the factory of the streams a sender
opens, taking one sender's offer (if the person at the receiver accepts
it) and its files.

Budgets: one sender per receiver (streams of any other peer, and a second
offer, are refused); an offer as bounded by L{twisted_nat.transfer.protocol}
and L{twisted_nat.transfer.names}; at most L{MAX_ACTIVE} files being
received at once; each file no longer than offered.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twisted_nat.errors import TransferError, TransferProtocolError, UnsafeName
from twisted_nat.streams.stream import PeerAddress
from twisted_nat.transfer.disk import PartFile, Survey, survey
from twisted_nat.transfer.names import check_names
from twisted_nat.transfer.protocol import (
    Abort,
    Accept,
    DataHeader,
    Failed,
    Message,
    Offer,
    Received,
    Refuse,
)
from twisted_nat.transfer.report import Outcome, Reporter
from twisted_nat.transfer.streams import MessageStream

MAX_ACTIVE = 32
"""Files a sender may send at once; a stream beyond is refused."""

Ask = Callable[[PeerAddress, Offer], Deferred[bool]]
"""Asks the person whether to accept an offer from a peer."""
InThread = Callable[..., Deferred[Any]]
"""Runs a blocking function in a thread (L{twisted.internet.threads.deferToThread})."""


@implementer(IProtocolFactory)
class Receiver:
    """
    Takes the files of the first peer whose offer is accepted.  C{done}
    fires with the L{Outcome}; C{closed} once the sender has closed the
    control stream after it (or it was lost).
    """

    log = Logger()

    def __init__(
        self,
        root: str,
        overwrite: bool,
        ask: Ask,
        in_thread: InThread,
        report: Reporter,
    ) -> None:
        self.root = root
        self.overwrite = overwrite
        self._ask = ask
        self._in_thread = in_thread
        self._report = report
        self.done: Deferred[Outcome] = Deferred()
        self.closed: Deferred[None] = Deferred()
        self.peer: PeerAddress | None = None
        self._control: MessageStream | None = None
        self._offer: Offer | None = None
        self._split: list[tuple[str, ...]] = []
        self._survey: Survey | None = None
        self._pending: set[int] = set()
        self._active: dict[int, PartFile] = {}
        self._received = 0
        self._failures: list[str] = []
        self._accepted = False
        self._outcome: Outcome | None = None

    def doStart(self) -> None:
        pass

    def doStop(self) -> None:
        pass

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        if not isinstance(addr, PeerAddress) or self._outcome is not None:
            return None
        if self.peer is not None and addr.key != self.peer.key:
            self.log.info("refused a stream of {peer}: busy with another sender", peer=addr)
            return None
        return MessageStream(self._message, self._ended)

    # --- messages ---

    def _message(self, stream: MessageStream, message: Message) -> None:
        if self._control is None and isinstance(message, Offer):
            self._control = stream
            self.peer = stream.transport.getPeer()
            self._offered(message)
        elif stream is self._control:
            if isinstance(message, Abort):
                self._finish(f"the sender stopped: {message.reason}")
            else:
                raise TransferProtocolError(f"unexpected {type(message).__name__} message")
        elif isinstance(message, DataHeader) and self._accepted:
            self._data(stream, message)
        else:
            raise TransferProtocolError(f"unexpected {type(message).__name__} message")

    def _offered(self, offer: Offer) -> None:
        self._offer = offer
        try:
            self._split = check_names([entry.name for entry in offer.files])
        except UnsafeName as e:
            self._refuse(f"cannot write {e}")
            return
        assert self.peer is not None
        self._report.offer(self.peer, offer, incoming=True)
        looking = self._in_thread(survey, self.root, offer.files, self._split)
        looking.addCallback(self._surveyed)
        looking.addErrback(self._unreadable)

    def _unreadable(self, failure: Failure) -> None:
        error = failure.value
        if isinstance(error, UnsafeName):
            self._refuse(f"cannot write {error}")
        elif isinstance(error, OSError):
            self._refuse(f"cannot read {self._below_root(error.filename)}: {error.strerror}")
        else:
            self.log.failure("looking at the output directory failed", failure)
            self._refuse(f"cannot look at the output directory: {error}")

    def _below_root(self, path: object) -> str:
        """
        A path the survey could not read as the sender may see it: below the
        output directory (whose own path is none of its business), cut short.
        """
        if not isinstance(path, str):
            return "the output directory"
        shown = os.path.relpath(path, self.root)
        return shown if len(shown) <= 80 else f"{shown[:80]}..."

    def _surveyed(self, found: Survey) -> Deferred[None] | None:
        self._survey = found
        if found.conflicts and not self.overwrite:
            more = f" (and {len(found.conflicts) - 1} more)" if len(found.conflicts) > 1 else ""
            self._refuse(f"{found.conflicts[0]}{more} exists at the receiver (use --overwrite)")
            return None
        assert self.peer is not None and self._offer is not None
        return self._ask(self.peer, self._offer).addCallback(self._answered)

    def _answered(self, yes: bool) -> None:
        if self._outcome is not None or self._control is None:
            return
        if not yes:
            self._refuse("the receiver refused the transfer")
            return
        assert self._survey is not None and self._offer is not None
        self._accepted = True
        complete = set(self._survey.complete)
        self._pending = set(range(len(self._offer.files))) - complete
        self._control.send(Accept(self._survey.have, self._survey.complete))
        self._report.accepted(sum(self._offer.files[i].size for i in complete))
        self._received = len(complete)
        self._maybe_done()

    def _refuse(self, reason: str) -> None:
        if self._control is not None and self._control.transport is not None:
            self._control.send(Refuse(reason))
            self._control.transport.loseWriteConnection()
        self._finish(reason)

    # --- files ---

    def _data(self, stream: MessageStream, header: DataHeader) -> None:
        assert self._offer is not None and self._survey is not None
        index = header.index
        if index not in self._pending or index in self._active:
            raise TransferProtocolError(f"data for file {index}, which is not awaited")
        if len(self._active) >= MAX_ACTIVE:
            raise TransferProtocolError(f"more than {MAX_ACTIVE} files at once")
        held = {have.index: have.offset for have in self._survey.have}
        if header.offset not in (0, held.get(index, 0)):
            raise TransferProtocolError(f"file {index} from an offset we do not hold")
        entry = self._offer.files[index]
        try:
            part = PartFile(
                self.root,
                self._split[index],
                entry,
                header.offset,
                self._survey.prefixes.get(index),
                self.overwrite,
            )
        except (OSError, UnsafeName) as e:
            self._cannot_write(entry.name, e)
            return
        self._active[index] = part
        self._report.resumed(entry.name, header.offset, held.get(index, 0))

        def write(data: bytes) -> None:
            try:
                part.write(data)
            except (OSError, TransferError) as e:
                self._cannot_write(entry.name, e)
                return
            self._report.moved(len(data))

        stream.raw = write
        stream.index = index

    def _file_ended(self, index: int, whole: bool) -> None:
        part = self._active.pop(index, None)
        if part is None or self._control is None:
            return
        name = part.entry.name
        if not whole:
            part.close()
            return
        try:
            why = part.finish()
        except OSError as e:
            self._cannot_write(name, e)
            return
        self._pending.discard(index)
        if why is None:
            self._received += 1
            self._control.send(Received(index))
        else:
            self._failures.append(f"{name}: {why}")
            self._control.send(Failed(index, why))
        self._report.file_done(name, part.entry.size, why)
        self._maybe_done()

    def _cannot_write(self, name: str, error: Exception) -> None:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        message = f"cannot write {name}: {reason}"
        if self._control is not None:
            self._control.send(Abort(f"the receiver {message}"))
            self._control.transport.loseConnection()
        self._finish(message)

    def _maybe_done(self) -> None:
        if self._accepted and not self._pending and self._outcome is None:
            assert self._control is not None and self._control.transport is not None
            self._control.transport.loseWriteConnection()
            failed = None
            if self._failures:
                failed = f"{len(self._failures)} files failed: {self._failures[0]}"
            self._finish(failed)

    # --- ends ---

    def _ended(self, stream: MessageStream, reason: Failure | None) -> None:
        if stream is self._control:
            if self._outcome is None:
                why = "the sender went away"
                if reason is not None and isinstance(reason.value, TransferProtocolError):
                    why = f"the sender broke the protocol: {reason.value}"
                elif reason is not None and not stream.peer_ended:
                    why = f"the sender went away: {reason.value}"
                self._finish(why)
            if not self.closed.called:
                self.closed.callback(None)
            return
        index = stream.index
        if index is not None:
            self._file_ended(index, stream.peer_ended)
            if stream.transport is not None and stream.peer_ended:
                stream.transport.loseConnection()

    def _finish(self, error: str | None) -> None:
        if self._outcome is not None:
            return
        for part in self._active.values():
            with contextlib.suppress(OSError):
                part.close()
        self._active.clear()
        files = len(self._offer.files) if self._offer is not None else 0
        if error is not None and self._accepted and self._pending:
            error += (
                f" ({self._received} of {files} files arrived;"
                " run the same command again to resume)"
            )
        self._outcome = Outcome(files, self._received, error)
        self.done.callback(self._outcome)
        if self._control is None and not self.closed.called:
            self.closed.callback(None)
