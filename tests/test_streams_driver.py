"""The QUIC driver alone, on a task.Clock, around a stand-in for aioquic's connection."""

from __future__ import annotations

from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import HandshakeCompleted, PingAcknowledged
from twisted.internet.task import Clock
from twisted.logger import Logger

from twisted_nat.limits import DropLog
from twisted_nat.streams.driver import TIMER_SLACK, VIRTUAL_PEER, QuicDriver, QuicStats


class StandIn:
    """Asks for its timer at one fixed moment and records what it is given."""

    def __init__(self, timer_at: float | None) -> None:
        self.configuration = QuicConfiguration()
        self.timer_at = timer_at
        self.handled: list[float] = []
        self.received: list[tuple[bytes, Any]] = []
        self.events: list[Any] = []
        self.outgoing: list[bytes] = []
        self._close_at: float | None = None  # aioquic's idle deadline, moved by what authenticates

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        self.received.append((data, addr))
        if data.endswith(b"boom"):
            raise ValueError("aioquic tripped")

    def handle_timer(self, now: float) -> None:
        # As aioquic's loss detection: only a moment strictly past the one
        # asked for is sure to count (it compares sent + delay with now - delay).
        self.handled.append(now)
        assert len(self.handled) < 10, "asked for the same moment again and again"
        if self.timer_at is not None and now > self.timer_at:
            self.timer_at = None

    def get_timer(self) -> float | None:
        return self.timer_at

    def next_event(self) -> Any:
        return self.events.pop(0) if self.events else None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        out, self.outgoing = self.outgoing, []
        return [(d, VIRTUAL_PEER) for d in out]


def driver(quic: StandIn, clock: Clock, handle: Any = None) -> tuple[QuicDriver, list[bytes]]:
    sent: list[bytes] = []
    stats = QuicStats()
    stand_in: Any = quic
    d = QuicDriver(
        clock, stand_in, sent.extend, handle or (lambda e: None), stats, DropLog(Logger(), clock)
    )
    return d, sent


SHORT_HEADER = bytes([0x40]) + b"c" * 8 + b"payload"


def test_a_timer_is_handled_just_past_its_moment() -> None:
    clock = Clock()
    clock.advance(0.1)
    at = 4.01174967015928
    quic = StandIn(at)
    d, _ = driver(quic, clock)
    d.transmit()
    clock.advance(at - 0.1)
    assert quic.handled == [at + TIMER_SLACK]
    assert quic.timer_at is None and not clock.getDelayedCalls()


def test_datagrams_come_from_and_go_to_the_one_virtual_peer() -> None:
    clock = Clock()
    quic = StandIn(None)
    d, sent = driver(quic, clock)
    quic.outgoing = [b"\xc0out"]
    d.datagram_received(SHORT_HEADER)
    assert quic.received == [(SHORT_HEADER, VIRTUAL_PEER)]
    clock.advance(0)
    assert sent == [b"\xc0out"]


def test_the_datagrams_of_one_pass_are_handed_over_together_in_order() -> None:
    clock = Clock()
    quic = StandIn(None)
    passes: list[list[bytes]] = []
    stats = QuicStats()
    stand_in: Any = quic
    d = QuicDriver(clock, stand_in, passes.append, lambda e: None, stats, DropLog(Logger(), clock))
    quic.outgoing = [b"\xc0one", b"\xc0two", b"\xc0three"]
    d.transmit()
    d.transmit()
    assert passes == [[b"\xc0one", b"\xc0two", b"\xc0three"]]
    assert stats.sent == 3


def test_a_burst_of_datagrams_is_answered_once_after_the_reactor_has_read_it() -> None:
    clock = Clock()
    quic = StandIn(None)
    d, sent = driver(quic, clock)
    quic.outgoing = [b"\xc0ack"]
    for _ in range(5):
        d.datagram_received(SHORT_HEADER)
    assert len(quic.received) == 5 and sent == []
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(0)
    assert sent == [b"\xc0ack"]
    assert not clock.getDelayedCalls()


def test_malformed_datagrams_and_failing_handlers_are_counted_not_raised() -> None:
    clock = Clock()
    quic = StandIn(None)
    quic.events = [PingAcknowledged(uid=1), HandshakeCompleted(None, False, False)]
    seen: list[Any] = []

    def handle(event: Any) -> None:
        seen.append(event)
        raise RuntimeError("an application bug")

    d, _ = driver(quic, clock, handle)
    d.datagram_received(b"\x40")  # too short for a header
    d.datagram_received(SHORT_HEADER + b"boom")
    clock.advance(0)
    assert d._stats.dropped_malformed == 2
    assert len(seen) == 2, "every event handed out despite the failures"
    assert d._drops.counts["malformed"] == 2


def test_writes_from_inside_a_handler_are_sent_before_the_driver_returns() -> None:
    clock = Clock()
    quic = StandIn(None)
    quic.events = [PingAcknowledged(uid=1)]

    def handle(event: Any) -> None:
        quic.outgoing.append(b"\x41reply")
        d.transmit()  # re-entered: runs again after, not inside

    d, sent = driver(quic, clock, handle)
    d.transmit()
    assert sent == [b"\x41reply"]


def test_a_stopped_driver_has_no_timer_and_ignores_datagrams() -> None:
    clock = Clock()
    quic = StandIn(5.0)
    d, _ = driver(quic, clock)
    d.transmit()
    assert clock.getDelayedCalls()
    d.datagram_received(SHORT_HEADER)
    d.stop()
    assert not clock.getDelayedCalls()
    d.datagram_received(SHORT_HEADER)
    assert len(quic.received) == 1


def test_a_datagram_that_authenticates_says_so_and_one_that_does_not_is_judged() -> None:
    clock = Clock()
    quic = StandIn(None)
    d, _ = driver(quic, clock)
    authentic = quic.receive_datagram

    def receive(data: bytes, addr: Any, now: float) -> None:
        authentic(data, addr, now)
        if not data.endswith(b"forged"):
            quic._close_at = now + len(quic.received)  # as aioquic, for a packet it took

    quic.receive_datagram = receive  # type: ignore[method-assign]
    assert d.datagram_received(SHORT_HEADER) is True
    assert d.datagram_received(SHORT_HEADER + b"forged") is False
    assert d._stats.dropped_malformed == 0, "well-formed, only not ours"
    assert d.datagram_received(b"\x40forged") is False
    assert d._stats.dropped_malformed == 1
