"""
A Twisted driver for aioquic's sans-I/O QUIC connection.

aioquic's C{QuicConnection} decides everything (handshake, loss recovery,
congestion control, flow control) and does no I/O: it is fed datagrams
and the time, and returns datagrams to send, a time to be woken at, and
events.  L{QuicDriver} is that I/O and nothing more: datagrams in from
the demultiplexer, datagrams out through a callable (the peer
connection's current path), its one timer on an injected C{IReactorTime},
and each event handed to a callable.

The connection never sees an address of the network.  Every datagram is
"from" and "to" L{VIRTUAL_PEER}, so a path that changes under the peer
connection (relay to direct, a new punch) is no migration to aioquic:
nothing is validated again and no stream notices.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from aioquic._buffer import Buffer
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import QuicEvent
from aioquic.quic.packet import QuicPacketType, pull_quic_header
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from twisted_nat.limits import DropLog
from twisted_nat.streams import _aioquic

TIMER_SLACK = 1e-6
"""Seconds past its moment that a QUIC timer is handled at (see L{QuicDriver._fire})."""

VIRTUAL_PEER = ("peer", 0)
"""The one address aioquic knows the peer by, whatever path carries it."""


@attrs.define
class QuicStats:
    """What the QUIC drivers of one service received, sent and dropped."""

    received: int = 0
    sent: int = 0
    dropped_unknown_peer: int = 0
    dropped_malformed: int = 0
    dropped_unexpected: int = 0
    key_mismatches: int = 0
    streams_refused: int = 0
    datagrams_received: int = 0


def initial_destination(datagram: bytes, cid_length: int) -> bytes | None:
    """
    The destination connection id of a QUIC Initial packet large enough
    to open a connection (RFC 9000 section 14.1: 1200 bytes), or None for
    anything else.
    """
    if len(datagram) < 1200:
        return None
    try:
        header = pull_quic_header(Buffer(data=datagram), host_cid_length=cid_length)
    except (ValueError, IndexError):
        return None
    if header.packet_type != QuicPacketType.INITIAL:
        return None
    return bytes(header.destination_cid)


def parses(datagram: bytes, cid_length: int) -> bool:
    """Whether C{datagram} starts with a QUIC header at all."""
    try:
        pull_quic_header(Buffer(data=datagram), host_cid_length=cid_length)
    except (ValueError, IndexError):
        return False
    return True


class QuicDriver:
    """
    Runs one aioquic connection on a Twisted reactor.

    @param send: carries the datagrams of one pass to the peer, in order
        (losing them is allowed).
    @param handle: gets each event, in order; it may call back into the
        connection (write, close), and what that produces is sent before
        the driver returns.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        quic: QuicConnection,
        send: Callable[[list[bytes]], None],
        handle: Callable[[QuicEvent], None],
        stats: QuicStats,
        drops: DropLog,
    ) -> None:
        self.quic = quic
        self._reactor = reactor
        self._send = send
        self._handle = handle
        self._stats = stats
        self._drops = drops
        self._timer: IDelayedCall | None = None
        self._timer_at: float | None = None
        self._busy = False
        self._again = False
        self._soon: IDelayedCall | None = None
        self.stopped = False
        self.on_timer: Callable[[], object] | None = None
        """Called after each QUIC timer is handled."""

    def connect(self) -> None:
        """Start the handshake (the client's side)."""
        self.quic.connect(VIRTUAL_PEER, now=self._reactor.seconds())
        self.transmit()

    def datagram_received(self, datagram: bytes) -> bool:
        """
        A datagram from the peer's path: whether it authenticated.  One
        that did not is parsed again, to count it if malformed (aioquic
        drops what it cannot read, silently); one that did needs no second
        look.
        """
        if self.stopped:
            return False
        self._stats.received += 1
        quic = self.quic
        before = _aioquic.idle_deadline(quic)
        try:
            quic.receive_datagram(datagram, VIRTUAL_PEER, now=self._reactor.seconds())
        except Exception as e:  # aioquic drops what it cannot read; anything else is counted
            self._stats.dropped_malformed += 1
            self._drops.drop("malformed", "dropped a QUIC datagram: {error!r}", error=e)
            return False
        if self._soon is None:
            self._soon = self._reactor.callLater(0, self._transmit_soon)
        if _aioquic.idle_deadline(quic) != before:
            return True
        if not parses(datagram, quic.configuration.connection_id_length):
            self._stats.dropped_malformed += 1
            self._drops.drop(
                "malformed", "dropped a malformed QUIC datagram of {size} bytes", size=len(datagram)
            )
        return False

    def _transmit_soon(self) -> None:
        """
        Answer the datagrams of one reactor turn at once: the reactor reads
        what has arrived in a burst before it runs this, so a burst costs
        one pass over the connection (one ACK, one flush), not one each.
        """
        self._soon = None
        if not self.stopped:
            self.transmit()

    def transmit(self) -> None:
        """
        Hand out the events, send what the connection has to send, and set
        its timer.  Called again while it runs (a handler writing), it runs
        once more after, rather than inside itself.
        """
        if self._busy:
            self._again = True
            return
        self._busy = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._events()
                now = self._reactor.seconds()
                datagrams = [datagram for datagram, _ in self.quic.datagrams_to_send(now=now)]
                if datagrams:
                    self._stats.sent += len(datagrams)
                    self._send(datagrams)
        finally:
            self._busy = False
        self._set_timer()

    def _events(self) -> None:
        event = self.quic.next_event()
        while event is not None:
            try:
                self._handle(event)
            except Exception:
                self.log.failure("a QUIC event handler failed on {event}", event=type(event))
            event = self.quic.next_event()

    def _set_timer(self) -> None:
        at = None if self.stopped else self.quic.get_timer()
        if at == self._timer_at and (self._timer is None or self._timer.active()):
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer, self._timer_at = None, at
        if at is not None:
            delay = max(0.0, at - self._reactor.seconds())
            self._timer = self._reactor.callLater(delay, self._fire)

    def _fire(self) -> None:
        at, self._timer, self._timer_at = self._timer_at, None, None
        if self.stopped:
            return
        # The timer is handled a microsecond past the moment asked for, not
        # at it: a clock lands a hair early when floating point adds the
        # delay, and aioquic's loss detection compares sent time plus delay
        # with now minus delay, which rounding can make never true; either
        # way it would ask again for the same moment, forever.
        now = self._reactor.seconds()
        if at is not None:
            now = max(now, at + TIMER_SLACK)
        self.quic.handle_timer(now=now)
        self.transmit()
        if self.on_timer is not None:
            self.on_timer()

    def stop(self) -> None:
        """Forget the connection: no timer, nothing received or sent any more."""
        self.stopped = True
        if self._soon is not None and self._soon.active():
            self._soon.cancel()
        self._soon = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self._timer_at = None
