"""
A fuzz run over every entry point that reads the network: the shared
socket's demultiplexer with every sub-protocol attached (STUN client, punch
control, keep-alive, TURN, the application), the STUN server, and the
rendezvous server's AMP byte stream.

The inputs are random bytes and valid messages damaged the way an attacker
or a bad link would: bits flipped, cut short, extended, spliced.  The valid
messages are the ones real peers exchanged a moment before (recorded as
they arrived), so a mutation reaches past the first check into sessions,
transactions and allocations that exist.  The damage is seeded, so a
failure repeats (only the fresh keys, nonces and transaction ids the code
itself makes differ between runs), and bounded by an iteration count, not
by time.

Two promises are checked: nothing raised escapes into the reactor (no call
raises, and nothing is logged as a failure), and memory does not grow with
the number of datagrams once the state the warm-up built is in place.
"""

from __future__ import annotations

import gc
import json
import random
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.internet.address import IPv4Address
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import (
    ILogObserver,
    LogEvent,
    formatEvent,
    globalLogBeginner,
    globalLogPublisher,
)
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.fakes import RecordingUDPTransport
from tests.support.world import World, build_world
from tests.test_turn import OTHER_PEER, PEER, SERVER, allocated, data_indication, settle
from twisted_nat import testing as sim
from twisted_nat.address import Address
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.rendezvous.protocol import registration_transcript
from twisted_nat.rendezvous.server import RendezvousServerFactory
from twisted_nat.stun.attributes import (
    ChangeRequest,
    Fingerprint,
    ResponsePort,
    Software,
    UnknownAttribute,
    Username,
)
from twisted_nat.stun.message import Message, MessageClass, Method, encode, request
from twisted_nat.stun.server import STUNServerGroup
from twisted_nat.stun.sourcelimit import SourceLimit
from twisted_nat.trust import Identity
from twisted_nat.trust.handshake import Offering
from twisted_nat.turn import encode_channel_data

SEED = 20261205
WARMUP = 2000
DATAGRAMS = 20_000
SESSIONS = 2_000
GROWTH_BOUND = 64 * 1024
"""
Bytes that may stay allocated after the measured inputs: under 4 bytes a
datagram, 33 a session; anything kept per input (a datagram, an address,
a log event) is larger.
"""


Datagram = tuple[UDPMultiplexer, bytes, Address]


def mutate(rng: random.Random, seed: bytes) -> bytes:
    """C{seed} damaged in one to four ways, or now and then random bytes instead."""
    if rng.random() < 0.1:
        return rng.randbytes(rng.randrange(0, 200))
    data = bytearray(seed)
    for _ in range(rng.randint(1, 4)):
        how = rng.randrange(6)
        if how == 0 and data:  # flip bits
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == 1 and data:  # set a byte to an edge value
            data[rng.randrange(len(data))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
        elif how == 2:  # cut short
            del data[rng.randrange(len(data) + 1) :]
        elif how == 3:  # extend
            data += rng.randbytes(rng.randrange(1, 64))
        elif how == 4 and data:  # cut out the middle
            start = rng.randrange(len(data))
            del data[start : start + rng.randrange(1, 16)]
        elif data:  # repeat a piece
            start = rng.randrange(len(data))
            piece = data[start : start + rng.randrange(1, 32)]
            data[start:start] = piece
    return bytes(data)


@implementer(ILogObserver)
class FailureCounter:
    """Counts the events logged, keeping only the first few failures: storing all would grow."""

    def __init__(self) -> None:
        self.events = 0
        self.failures = 0
        self.first: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events += 1
        if event.get("log_failure") is not None:
            self.failures += 1
            if len(self.first) < 3:
                self.first.append(event)


@contextmanager
def no_escapes() -> Iterator[list[BaseException]]:
    """
    Collects what a fed input raised (the caller appends it) and watches
    everything logged; at the end, neither may hold a failure.  Garbage is
    collected inside, so a Deferred that died with an unhandled error is
    logged here.
    """
    raised: list[BaseException] = []
    counter = FailureCounter()
    globalLogPublisher.addObserver(counter)
    try:
        yield raised
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(counter)
    assert not raised, f"{len(raised)} inputs raised; the first: {raised[0]!r}"
    assert not counter.failures, (
        f"{counter.failures} failures logged; the first: {formatEvent(counter.first[0])}\n"
        + counter.first[0]["log_failure"].getTraceback()
    )


@contextmanager
def log_history_off() -> Iterator[None]:
    """
    Until a program begins logging, Twisted's global log publisher keeps
    the last 65,536 events (and whatever they refer to) for the first
    observer; no test run begins logging, so that history would count as
    growth.  It is detached while memory is measured.
    """
    history = globalLogBeginner._temporaryObserver
    if history is not None:
        globalLogPublisher.removeObserver(history)
    try:
        yield
    finally:
        if history is not None:
            globalLogPublisher.addObserver(history)


def growth(step: Callable[[int], None], iterations: int = DATAGRAMS) -> int:
    """
    Bytes still allocated after C{iterations} calls of C{step}, run after
    L{WARMUP} calls built whatever state the inputs build (caches, bounded
    tables, counters): what is left is what grows with the input.
    """
    with log_history_off():
        for i in range(WARMUP):
            step(i)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(WARMUP, WARMUP + iterations):
                step(i)
            gc.collect()
            grew = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
    return grew


class Recorder:
    """Every datagram that reaches any demultiplexer while L{on}, with the demultiplexer."""

    def __init__(self) -> None:
        self.on = True
        self.seen: list[Datagram] = []


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    recorder = Recorder()
    receive = UDPMultiplexer.datagramReceived

    def recording(self: UDPMultiplexer, datagram: bytes, addr: Address) -> None:
        if recorder.on:
            recorder.seen.append((self, datagram, addr))
        receive(self, datagram, addr)

    monkeypatch.setattr(UDPMultiplexer, "datagramReceived", recording)
    return recorder


def feed_datagrams(
    rng: random.Random, seeds: list[Datagram], raised: list[BaseException], tick: Callable[[], None]
) -> Callable[[int], None]:
    """A step that sends one damaged datagram to the socket its original reached."""

    def step(i: int) -> None:
        mux, data, addr = rng.choice(seeds)
        if rng.random() < 0.05:
            addr = (f"203.0.113.{rng.randrange(256)}", rng.randrange(1, 65536))
        try:
            UDPMultiplexer.datagramReceived(mux, mutate(rng, data), addr)
        except Exception as e:
            raised.append(e)
        if i % 100 == 99:
            tick()

    return step


def test_the_shared_socket_of_connected_peers(recorded: Recorder) -> None:
    """STUN client, punching, keep-alive, application data and QUIC, on two connected peers."""
    full_cone = ("full-cone", sim.PortAllocation.PRESERVING)
    w = build_world(
        {"alice": full_cone, "bob": full_cone},
        World,
        seed=SEED,
        keepalive_interval=1.0,
        keepalive_timeout=0.5,
    )
    alice, bob = w.services["alice"], w.services["bob"]
    # Alice takes streams, so QUIC connects as soon as the punch does.
    alice.streams.factory = Factory.forProtocol(Protocol)
    connection = w.internet.run_until(alice.connect("bob"))
    w.internet.advance(0.5)
    for i in range(5):
        connection.write(b"hello %d" % i)
        bob.connections["alice"].write(b"hi %d" % i)
        w.internet.advance(1.0)
    w.internet.advance(30.0)  # keep-alives, once the data has stopped
    peers = {id(s.mux) for s in (alice, bob)}
    recorded.on = False
    seeds = [d for d in recorded.seen if id(d[0]) in peers]
    routed = {type(mux.route(data, addr)).__name__ for mux, data, addr in seeds}
    assert routed == {"STUNClient", "HolePuncher", "Keeper", "AppDataRouter", "QuicRouter"}
    rng = random.Random(SEED)
    with no_escapes() as raised:
        grew = growth(feed_datagrams(rng, seeds, raised, lambda: w.internet.advance(0.05)))
    assert grew < GROWTH_BOUND
    assert "bob" in alice.connections, "the damage did not break the connection"


def test_the_shared_socket_of_a_turn_client(recorded: Recorder) -> None:
    """Allocation answers, Data indications and ChannelData, on a socket with an allocation."""
    allocation, client, server, clock, mux = allocated()
    allocation.bind_channel(PEER)
    allocation.create_permission(OTHER_PEER[0])
    settle(clock)
    mux.datagramReceived(data_indication(OTHER_PEER, b"via indication"), SERVER)
    mux.datagramReceived(encode_channel_data(0x4000, b"via channel"), SERVER)
    recorded.on = False
    seeds = [d for d in recorded.seen if d[0] is mux]
    assert len(allocation.received) == 2
    routed = {type(mux.route(data, addr)).__name__ for mux, data, addr in seeds}
    assert routed == {"STUNClient", "TURNClient"}
    # the test transport records what the client writes, and the test
    # receiver what it delivers: keep them from growing, counting deliveries
    transport: Any = mux.transport
    transport.written = _Discarding()
    delivered = 0

    def count(data: bytes, peer: Address) -> None:
        nonlocal delivered
        delivered += 1

    allocation.receiver = count
    rng = random.Random(SEED)
    with no_escapes() as raised:
        grew = growth(feed_datagrams(rng, seeds, raised, lambda: clock.advance(0.05)))
    assert grew < GROWTH_BOUND
    assert delivered > 0, "damaged datagrams that were still valid reached the application"


class _Discarding(list[Any]):
    """A list that keeps nothing: for a test transport's record of writes."""

    def append(self, item: Any) -> None:
        pass


class _SilentTransport(RecordingUDPTransport):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self.sent = 0

    def write(self, packet: bytes, addr: Address | None = None) -> None:
        self.sent += 1


def stun_requests() -> list[bytes]:
    """Requests of every kind the server answers differently."""
    tid = bytes(range(12))
    return [
        encode(request()),
        encode(request(attributes=[Software("fuzz"), Fingerprint()])),
        encode(request(attributes=[ChangeRequest(True, True), ResponsePort(4000)])),
        encode(request(attributes=[Username("alice"), UnknownAttribute(0x7777, b"abcd")])),
        encode(request(Method.ALLOCATE)),
        encode(Message(Method.BINDING, MessageClass.REQUEST, tid, (), b"\x01\x02\x03\x04")),
        encode(Message(Method.BINDING, MessageClass.SUCCESS, tid)),
    ]


def test_the_stun_server() -> None:
    clock = Clock()
    limit = SourceLimit(clock, rate=1000, burst=2000, max_sources=64)
    group = STUNServerGroup(("192.0.2.1", 3478), ("192.0.2.2", 3479), limit=limit)
    members = []
    for (host, port), member in group.members():
        member.makeConnection(_SilentTransport(host, port))
        members.append(member)
    seeds = stun_requests()
    rng = random.Random(SEED)

    with no_escapes() as raised:

        def step(i: int) -> None:
            member = rng.choice(members)
            source = rng.choice(["198.51.100.5", "2001:db8::5", f"10.0.0.{rng.randrange(256)}"])
            try:
                member.datagramReceived(mutate(rng, rng.choice(seeds)), (source, 40000))
            except Exception as e:
                raised.append(e)
            if i % 100 == 99:
                clock.advance(0.1)

        grew = growth(step)
    assert grew < GROWTH_BOUND
    assert len(limit.buckets) <= 64
    stats = group.stats
    assert stats.answered > 0 and stats.bad_request > 0 and stats.dropped_garbage > 0


def amp_box(**fields: bytes) -> bytes:
    box = amp.AmpBox({k.encode(): v for k, v in fields.items()})
    return bytes(box.serialize())


def parse_boxes(data: bytes) -> list[dict[bytes, bytes]]:
    """The AMP boxes in C{data}: keys and values each behind a 16-bit length; a box ends with 0."""
    boxes: list[dict[bytes, bytes]] = []
    box: dict[bytes, bytes] = {}
    offset = 0
    while offset + 2 <= len(data):
        size = int.from_bytes(data[offset : offset + 2], "big")
        offset += 2
        if size == 0:
            boxes.append(box)
            box = {}
            continue
        key = data[offset : offset + size]
        offset += size
        size = int.from_bytes(data[offset : offset + 2], "big")
        box[key] = data[offset + 2 : offset + 2 + size]
        offset += 2 + size
    return boxes


def test_the_rendezvous_servers_byte_stream() -> None:
    """
    Whole sessions of valid boxes (challenge, register, lookup, connect,
    release), one of them damaged, each on a connection of its own.
    """
    clock = Clock()
    factory = RendezvousServerFactory(clock, relay_timeout=1.0)
    identity = Identity(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    offer = Offering(identity, "fuzzer", (), None, "nobody", None).offer
    rng = random.Random(SEED)

    def connect() -> tuple[Any, StringTransport]:
        protocol = factory.buildProtocol(IPv4Address("TCP", "198.51.100.5", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.5", 5000))
        protocol.makeConnection(transport)
        return protocol, transport

    def session(damage: int | None) -> list[bytes]:
        """The boxes of one session, registering with a signature over a fresh challenge."""
        protocol, transport = connect()
        protocol.dataReceived(amp_box(_command=b"Challenge", _ask=b"1"))
        [challenge] = parse_boxes(transport.value())
        proof = registration_transcript(challenge[b"server"], challenge[b"nonce"], "register", "f")
        boxes = [
            amp_box(
                _command=b"Register",
                _ask=b"2",
                name=b"f",
                key=identity.public.text.encode(),
                signature=identity.sign(proof),
            ),
            amp_box(_command=b"Lookup", _ask=b"3", name=b"f"),
            amp_box(_command=b"Connect", _ask=b"4", offer=json.dumps(offer.as_json()).encode()),
            amp_box(_command=b"Lookup", _ask=b"5", name=b"nobody"),
        ]
        if damage is not None:
            index = damage % len(boxes)
            boxes[index] = mutate(rng, boxes[index])
        for box in boxes:
            protocol.dataReceived(box)
        protocol.connectionLost(Failure(CONNECTION_DONE))
        return boxes

    session(None)
    assert factory.stats.registrations == 1

    with no_escapes() as raised:

        def step(i: int) -> None:
            try:
                if i % 10 == 0:
                    protocol, _ = connect()
                    protocol.dataReceived(rng.randbytes(rng.randrange(1, 300)))
                    protocol.connectionLost(Failure(CONNECTION_DONE))
                else:
                    session(i)
            except Exception as e:
                raised.append(e)
            if i % 50 == 49:
                clock.advance(1.0)

        grew = growth(step, SESSIONS)
    assert grew < GROWTH_BOUND
    assert factory.names() == []
