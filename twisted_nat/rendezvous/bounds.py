"""
What one rendezvous connection can make us hold: the box it is sending
(L{BoundedBoxes}), and what is written to it or under way for it
(L{ReadGate}).

A box that never ends would be held until memory ran out: a box over
L{MAX_BOX_SIZE} bytes or L{MAX_BOX_KEYS} keys closes its connection.  A
peer that sends requests without reading the answers would have them
buffered for it without end; one that sends requests faster than they are
answered (each a registry operation) would queue work without end.  A
L{ReadGate} stops reading from such a connection until it catches up, so
that what is written to it (over plain TCP), and what is under way for it,
stay bounded; TCP's own flow control then holds the peer back.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IPushProducer
from twisted.protocols import amp
from zope.interface import implementer

MAX_BOX_SIZE = 64 * 1024
"""
The most bytes one box may take on the wire, keys, values and their length
prefixes: ours take a few KB (an offer with every candidate, under 8 KB).
"""

MAX_BOX_KEYS = 32
"""The most keys one box may have: ours have up to 5."""

OVERSIZED = "oversized box"

MAX_IN_FLIGHT = 64
"""
Requests of one connection under way at once before it is read no more:
well above what a peer needs (its offers waiting are capped lower).
"""


class _Pausable(Protocol):
    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


@implementer(IPushProducer)
class ReadGate:
    """
    Pauses reading from C{transport} while what is written to it backs up
    (the transport, as the consumer this producer is registered with, says
    so) or while C{max_in_flight} requests are under way; resumes when
    neither holds.
    """

    def __init__(self, transport: _Pausable, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self._transport: _Pausable | None = transport
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._writes_backed_up = False
        self.paused = False

    def pauseProducing(self) -> None:
        self._writes_backed_up = True
        self._update()

    def resumeProducing(self) -> None:
        self._writes_backed_up = False
        self._update()

    def stopProducing(self) -> None:
        """The connection is gone: pause and resume nothing more."""
        self._transport = None

    def started(self) -> None:
        """A request is under way."""
        self.in_flight += 1
        self._update()

    def finished(self) -> None:
        """A request under way is answered."""
        self.in_flight -= 1
        self._update()

    def _update(self) -> None:
        pause = self._writes_backed_up or self.in_flight >= self.max_in_flight
        if pause != self.paused and self._transport is not None:
            self.paused = pause
            if pause:
                self._transport.pauseProducing()
            else:
                self._transport.resumeProducing()


class BoundedBoxes(amp.BinaryBoxProtocol):
    """
    AMP's box parser, closing the connection on a box over L{MAX_BOX_SIZE}
    bytes or L{MAX_BOX_KEYS} keys, or a key over AMP's 255 bytes, and
    reading nothing more from it; each calls L{input_refused} with
    L{OVERSIZED}.
    """

    _box_size = 0
    _box_keys = 0
    _refusing = False

    def dataReceived(self, data: bytes) -> None:
        if not self._refusing:
            super().dataReceived(data)

    def proto_init(self, string: bytes) -> str:
        self._box_size = self._box_keys = 0
        return super().proto_init(string)  # type: ignore[no-any-return]

    def proto_key(self, string: bytes) -> str:
        if string:
            self._box_keys += 1
            self._box_size += 2 + len(string)
            if self._box_keys > MAX_BOX_KEYS:
                return self._oversized(f"a box of more than {MAX_BOX_KEYS} keys")
        return super().proto_key(string)  # type: ignore[no-any-return]

    def proto_value(self, string: bytes) -> str:
        self._box_size += 2 + len(string)
        if self._box_size > MAX_BOX_SIZE:
            return self._oversized(f"a box of more than {MAX_BOX_SIZE} bytes")
        return super().proto_value(string)  # type: ignore[no-any-return]

    def proto_done(self, string: bytes) -> str:
        return "done"

    def _oversized(self, why: str) -> str:
        """Drop the box, and the connection: a state of C{"done"} closes it."""
        self._refusing = True
        self._currentBox = None
        self.input_refused(OVERSIZED, why)
        return "done"

    def lengthLimitExceeded(self, length: int) -> None:
        self._refusing = True
        self.input_refused(OVERSIZED, f"a key of {length} bytes")
        super().lengthLimitExceeded(length)

    def input_refused(self, reason: str, detail: str) -> None:
        """Called for every box refused, C{reason} saying why; for counters and logs."""
