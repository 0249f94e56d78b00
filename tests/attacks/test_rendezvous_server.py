"""
The rendezvous server survives any client: what one connection, or one
address, can make it hold is bounded, and bad bytes are counted and logged
at a bounded rate, never raised into the reactor.

Each server here is a real L{RendezvousServerFactory} on a C{Clock}, driven
box by box through C{StringTransport}s (L{tests.support.amp_wire}).
"""

from __future__ import annotations

import json
import random
import tracemalloc
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols import amp
from twisted.python.failure import Failure

from tests.support.amp_wire import WireClient, box
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.rendezvous import make_rendezvous_service
from twisted_nat.rendezvous.bounds import MAX_BOX_KEYS, MAX_BOX_SIZE, MAX_IN_FLIGHT, ReadGate
from twisted_nat.rendezvous.protocol import Challenge
from twisted_nat.rendezvous.quotas import ServerLimits
from twisted_nat.rendezvous.registry import MemoryRegistry
from twisted_nat.rendezvous.server import RendezvousServerFactory
from twisted_nat.tap.options import DemoOptions, PeerOptions
from twisted_nat.trust import Identity
from twisted_nat.trust.handshake import Offering

reactor: Any = global_reactor
VALUE = b"v" * 65535


def server(**limits: Any) -> tuple[RendezvousServerFactory, Clock]:
    clock = Clock()
    return RendezvousServerFactory(clock, 10.0, limits=ServerLimits(**limits)), clock


def key_value(key: bytes, value: bytes) -> bytes:
    return len(key).to_bytes(2, "big") + key + len(value).to_bytes(2, "big") + value


def error_code(answer: amp.AmpBox | None) -> bytes | None:
    assert answer is not None
    return answer.get(b"_error_code")


# --- 1. a box that never ends ---


def test_a_box_that_never_ends_closes_its_connection_within_its_size() -> None:
    factory, _ = server()
    client = WireClient(factory)
    fed = 0
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(64):  # 4 MiB offered
            data = key_value(b"k%d" % n, VALUE)
            client.protocol.dataReceived(data)
            if client.open:
                fed += len(data)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert not client.open
    assert fed <= MAX_BOX_SIZE  # closed by the value that took it over
    assert grown < 256 * 1024  # nothing of the 4 MiB was kept
    assert factory.stats.closed_oversized == 1


def test_a_box_of_too_many_keys_or_too_long_a_key_closes_its_connection() -> None:
    factory, _ = server()
    many = WireClient(factory)
    for n in range(MAX_BOX_KEYS):
        many.protocol.dataReceived(key_value(b"k%d" % n, b"x"))
    assert many.open
    many.protocol.dataReceived(key_value(b"one-more", b"x"))
    assert not many.open

    long_key = WireClient(factory)
    long_key.protocol.dataReceived((256).to_bytes(2, "big") + b"k" * 256)
    assert not long_key.open
    assert factory.stats.closed_oversized == 2


# --- 2. offers to a peer that never answers ---

CANDIDATES = tuple(
    Candidate(CandidateType.HOST, f"2001:db8::{i + 1:x}", 40000 + i) for i in range(32)
)


def registered(factory: RendezvousServerFactory, name: str, host: str) -> WireClient:
    client = WireClient(factory, host)
    assert error_code(client.register(name, KEYS[name])) is None
    return client


KEYS = {name: Identity.generate() for name in ("mute", "alice", "bob", "carol")}


def offer(sender: str, to: str = "mute") -> bytes:
    value = Offering(KEYS[sender], sender, CANDIDATES, None, to).offer
    return json.dumps(value.as_json()).encode()


def test_offers_waiting_for_answers_are_capped_per_connection_and_in_all() -> None:
    factory, _ = server(max_pending_per_connection=4, max_pending=6)
    mute = registered(factory, "mute", "10.0.0.1")
    alice = registered(factory, "alice", "10.0.0.2")
    bob = registered(factory, "bob", "10.0.0.3")
    carol = registered(factory, "carol", "10.0.0.4")

    alice_tags = [alice.send(b"Connect", offer=offer("alice", "bob")) for _ in range(6)]
    assert [error_code(alice.answer(tag)) for tag in alice_tags[4:]] == [b"BUSY", b"BUSY"]
    assert len(bob.boxes_from_server()) == 4  # per sender
    carol_tags = [carol.send(b"Connect", offer=offer("carol")) for _ in range(3)]
    assert error_code(carol.answer(carol_tags[2])) == b"BUSY"  # 6 in all
    assert len(mute.boxes_from_server()) == 2
    assert factory.directory.pending.total == 6
    assert factory.stats.refused_busy == 3

    too_many = alice.call(b"Connect", offer=offer("alice", "carol"))
    assert b"offers waiting" in too_many[b"_error_description"]


def test_a_peer_that_never_answers_holds_at_most_its_share_until_offers_expire() -> None:
    factory, clock = server(max_pending_per_connection=4)
    mute = registered(factory, "mute", "10.0.0.1")
    alice = registered(factory, "alice", "10.0.0.2")
    bob = registered(factory, "bob", "10.0.0.3")
    sent = [(alice, alice.send(b"Connect", offer=offer("alice"))) for _ in range(3)]
    sent += [(bob, bob.send(b"Connect", offer=offer("bob"))) for _ in range(3)]
    # alice's three and bob's first wait for mute; bob's other two are refused at once
    assert len(mute.boxes_from_server()) == 4
    assert factory.directory.pending.waiting_for(mute.protocol) == 4

    clock.advance(10.0)
    answers = [client.answer(tag) for client, tag in sent]
    assert [error_code(answer) for answer in answers] == [b"PEER_UNAVAILABLE"] * 4 + [b"BUSY"] * 2
    for answer in answers[:4]:
        assert answer is not None
        assert b"did not answer within 10 s" in answer[b"_error_description"]
    # Nothing is held for them any more: a late answer is to no question, a refused box.
    assert factory.directory.pending.total == 0
    with capturedLogs() as events:
        mute.protocol.dataReceived(box(_answer=b"1", answer=b"{}"))
    assert not [e for e in events if "log_failure" in e]
    assert mute.open
    assert factory.stats.refused_malformed == 1


# --- 3. connections from one address ---


def test_connections_are_capped_per_source_and_in_all() -> None:
    factory, _ = server(max_per_source=3, max_connections=5)
    first = [WireClient(factory, "192.0.2.1") for _ in range(5)]
    assert [c.open for c in first] == [True, True, True, False, False]
    assert WireClient(factory, "192.0.2.2").open
    same_64 = [WireClient(factory, f"2001:db8::{n}") for n in (1, 2)]
    assert [c.open for c in same_64] == [True, False]  # 5 in all now
    assert not WireClient(factory, "192.0.2.3").open
    assert factory.stats.refused_connections == 4
    assert factory.directory.admission.total == 5

    first[0].lose()
    assert WireClient(factory, "192.0.2.1").open  # its place is free again
    for refused in first[3:]:
        refused.lose()  # a refused connection gives back nothing it did not take
    assert factory.directory.admission.total == 5


@pytest_twisted.ensureDeferred
async def test_over_loopback_a_source_over_its_limit_is_cut_at_once() -> None:
    service = make_rendezvous_service(
        reactor, "tcp:0:interface=127.0.0.1", limits=ServerLimits(max_per_source=2)
    )
    service.startService()
    try:
        port = (await service.when_listening()).getHost().port  # type: ignore[attr-defined]
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        connections = [await endpoints.connectProtocol(endpoint, Gone()) for _ in range(3)]
        # The server cuts the third at once; the timeout only keeps a failure from hanging.
        await connections[2].lost.addTimeout(10, reactor)
        answer = await connections[0].callRemote(Challenge)
        assert len(answer["nonce"]) == 32
        assert not connections[0].lost.called
        assert service.factory.stats.refused_connections == 1
        for connection in connections[:2]:
            connection.transport.loseConnection()
        await defer.gatherResults([c.lost for c in connections[:2]])
    finally:
        await service.stopService()


class Gone(amp.AMP):
    """A client that knows when its connection is gone."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


def test_the_connection_limit_stays_below_the_descriptor_limit(monkeypatch) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (200, 4096))
    factory, _ = server(max_connections=10_000)
    assert factory.directory.max_connections == 200 - 64


def test_registrations_from_one_source_are_rate_limited() -> None:
    factory, clock = server(register_rate=1.0, register_burst=3)
    clients = [WireClient(factory, "198.51.100.1") for _ in range(5)]
    identities = [Identity.generate() for _ in clients]
    codes = [error_code(c.register(f"p{n}", identities[n])) for n, c in enumerate(clients)]
    assert codes == [None, None, None, b"BUSY", b"BUSY"]
    elsewhere = WireClient(factory, "198.51.100.2")
    assert error_code(elsewhere.register("other", Identity.generate())) is None
    clock.advance(1.0)
    assert error_code(clients[3].register("p3", identities[3])) is None
    assert error_code(clients[4].register("p4", identities[4])) == b"BUSY"
    assert factory.stats.registrations == 5
    assert factory.stats.refused_busy == 3


def test_connections_that_register_no_name_are_closed_after_the_idle_timeout() -> None:
    factory, clock = server(idle_timeout=5.0)
    idle = WireClient(factory, "203.0.113.1")
    named = registered(factory, "alice", "203.0.113.2")
    clock.advance(4.9)
    assert idle.open
    clock.advance(0.1)
    assert not idle.open
    assert factory.stats.closed_idle == 1
    idle.lose()
    clock.advance(3600)
    assert named.open
    assert factory.directory.admission.total == 1


# --- 4. malformed input ---


def test_a_non_ascii_command_name_is_refused_counted_and_never_unhandled() -> None:
    factory, _ = server()
    client = WireClient(factory)
    with capturedLogs() as events:
        answer = client.call(b"\xff\xfeConnect")
    assert error_code(answer) == b"MALFORMED"
    assert factory.stats.refused_malformed == 1
    assert client.open
    texts = [formatEvent(e) for e in events]
    assert not [e for e in events if "log_failure" in e]
    assert not [t for t in texts if "Unhandled" in t]


def test_thousands_of_bad_boxes_are_counted_and_logged_a_few_times() -> None:
    factory, _ = server()
    client = WireClient(factory)
    bad = [
        box(_command=b"\xc3\x28", _ask=b"1"),  # not ASCII
        box(noise=b"x" * 40),  # no command, no answer
        box(_answer=b"ffff", answer=b"{}"),  # an answer to no question
        box(_error=b"fffe"),  # an error to no question, without its code
        box(_command=b"StartTLS", _ask=b"2"),  # AMP's own, not served
    ]
    with capturedLogs() as events:
        for n in range(5000):
            client.protocol.dataReceived(bad[n % len(bad)])
    assert client.open
    assert factory.stats.refused_malformed == 4000  # StartTLS is an unknown command
    assert not [e for e in events if "log_failure" in e]
    assert len(events) <= 10
    assert factory.directory.drops.counts["malformed box"] == 3000


@pytest.mark.parametrize("seed", range(5))
def test_garbage_bytes_never_raise_and_are_counted(seed: int) -> None:
    factory, _ = server()
    client = WireClient(factory)
    garbage = random.Random(seed).randbytes(20_000)
    with capturedLogs() as events:
        for start in range(0, len(garbage), 1000):
            client.protocol.dataReceived(garbage[start : start + 1000])
    assert not [e for e in events if "log_failure" in e]
    assert len(events) <= 10
    # A random length prefix is almost always over AMP's 255 for a key.
    assert not client.open
    assert factory.stats.closed_oversized + factory.stats.refused_malformed >= 1


# --- requests faster than they are answered, answers never read ---


class SlowRegistry(MemoryRegistry):
    """A registry whose lookups are answered when the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[Deferred[Any]] = []

    def lookup(self, name: str) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.waiting.append(d)
        return d


def test_a_connection_is_read_no_more_while_too_many_requests_are_under_way() -> None:
    registry = SlowRegistry()
    factory = RendezvousServerFactory(Clock(), 10.0, registry)
    client = WireClient(factory)
    for _ in range(MAX_IN_FLIGHT - 1):
        client.send(b"Lookup", name=b"bob")
    assert client.transport.producerState == "producing"
    client.send(b"Lookup", name=b"bob")
    assert client.transport.producerState == "paused"
    assert len(registry.waiting) == MAX_IN_FLIGHT
    registry.waiting.pop().callback(None)
    assert client.transport.producerState == "producing"


def test_a_connection_is_read_no_more_while_its_answers_back_up() -> None:
    factory, _ = server()
    client = WireClient(factory)
    gate = client.transport.producer
    assert isinstance(gate, ReadGate)
    gate.pauseProducing()  # as the transport does when what it must write backs up
    assert client.transport.producerState == "paused"
    gate.resumeProducing()
    assert client.transport.producerState == "producing"


def test_the_gate_pauses_while_either_reason_holds() -> None:
    transport = StringTransport()
    gate = ReadGate(transport, max_in_flight=2)
    gate.started()
    gate.started()
    gate.pauseProducing()
    gate.finished()
    assert transport.producerState == "paused"  # writes still back up
    gate.resumeProducing()
    assert transport.producerState == "producing"
    gate.stopProducing()
    gate.started()
    gate.started()
    assert transport.producerState == "producing"  # the connection is gone


# --- 5. the status example binds loopback ---


@pytest.mark.parametrize("options", [PeerOptions, DemoOptions])
def test_the_status_example_binds_loopback_only(options: type) -> None:
    text = " ".join(str(options()).split())
    assert "e.g. tcp:8080:interface=127.0.0.1" in text
    assert "e.g. tcp:8080." not in text
