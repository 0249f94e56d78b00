"""
QUIC streams between two peers on the simulated internet: the handshake
bound to the peers' keys, streams both ways, half-close, flow control,
path changes and failures.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.support.world import World, build_world
from twisted_nat import testing as sim
from twisted_nat.errors import KeyMismatch, StreamIdleTimeout, StreamReset, StreamsClosed
from twisted_nat.streams import StreamSettings
from twisted_nat.trust import Identity

FULL_CONE = ("full-cone", sim.PortAllocation.PRESERVING)


class Recorder(Protocol):
    """Keeps what arrives and how the stream ended."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Failure | None = None
        self.made = False

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason


class Echo(Recorder):
    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        assert self.transport is not None
        self.transport.write(data)


@implementer(IHalfCloseableProtocol)
class HalfEcho(Echo):
    """Echoes, and ends its side when the peer ends its own."""

    read_lost = False

    def readConnectionLost(self) -> None:
        self.read_lost = True
        self.transport.loseWriteConnection()

    def writeConnectionLost(self) -> None:
        pass


class Servers(Factory):
    def __init__(self, kind: type[Recorder] = Echo) -> None:
        self.kind = kind
        self.built: list[Recorder] = []

    def buildProtocol(self, addr: Any) -> Recorder:
        protocol = self.kind()
        protocol.factory = self
        self.built.append(protocol)
        return protocol


def world(**options: Any) -> World:
    return build_world({"alice": FULL_CONE, "bob": FULL_CONE}, World, seed=7, **options)


def connected(w: World, bob_factory: Servers | None = None) -> Any:
    alice, bob = w.services["alice"], w.services["bob"]
    bob.streams.factory = bob_factory
    connection = w.internet.run_until(alice.connect("bob"))
    w.internet.advance(0.5)
    return alice, bob, connection


def test_a_stream_echoes_through_the_simulated_internet() -> None:
    w = world()
    servers = Servers()
    alice, bob, connection = connected(w, servers)
    client = Recorder()
    opened = w.internet.run_until(connection.open_stream(client))
    assert opened is client and client.made
    client.transport.write(b"hello over QUIC")
    w.internet.advance(1.0)
    assert bytes(client.received) == b"hello over QUIC"
    assert len(servers.built) == 1
    assert servers.built[0].transport.getPeer().key == alice.key
    assert client.transport.getPeer().key == bob.key
    w.stop()


@implementer(IPushProducer)
class Producer:
    """Writes a block each time it is resumed, until told to stop."""

    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1

    def stopProducing(self) -> None:
        pass


def test_both_peers_open_streams_and_see_each_other_by_key() -> None:
    w = world()
    alice, bob, _ = connected(w, Servers())
    alice.streams.factory = Servers()
    from_bob = Recorder()
    w.internet.run_until(bob.open_stream("alice", from_bob))
    from_bob.transport.write(b"bob speaks first")
    w.internet.advance(1.0)
    assert bytes(from_bob.received) == b"bob speaks first"
    assert from_bob.transport.getPeer().key == alice.key
    assert from_bob.transport.stream_id % 4 == 1, "bob answered the punch: the QUIC server"
    w.stop()


def test_half_close_delivers_every_byte_and_ends_cleanly() -> None:
    w = world()
    servers = Servers(HalfEcho)
    alice, bob, connection = connected(w, servers)
    client = HalfClient()
    w.internet.run_until(connection.open_stream(client))
    client.transport.write(b"x" * 100_000)
    client.transport.loseWriteConnection()
    w.internet.advance(5.0)
    assert bytes(client.received) == b"x" * 100_000
    assert client.wrote_lost and client.read_lost
    assert getattr(servers.built[0], "read_lost", False)
    assert client.lost is not None and client.lost.check(ConnectionDone)
    assert servers.built[0].lost is not None and servers.built[0].lost.check(ConnectionDone)
    assert not connection.streams.streams, "both ends forgot the stream"
    w.stop()


@implementer(IHalfCloseableProtocol)
class HalfClient(Recorder):
    wrote_lost = False
    read_lost = False

    def readConnectionLost(self) -> None:
        self.read_lost = True

    def writeConnectionLost(self) -> None:
        self.wrote_lost = True


def test_a_fast_writer_is_paused_above_the_high_water_mark_and_resumed_below_the_low() -> None:
    settings = StreamSettings(high_water=64_000, low_water=16_000)
    w = world(streams=settings)
    servers = Servers(Recorder)
    alice, bob, connection = connected(w, servers)
    client = Recorder()
    w.internet.run_until(connection.open_stream(client))
    producer = Producer()
    client.transport.registerProducer(producer, True)
    client.transport.write(b"a" * 50_000)
    assert producer.paused == 0, "below the high-water mark"
    client.transport.write(b"b" * 50_000)
    assert producer.paused == 1, "above it: paused at once, not buffered"
    assert producer.resumed == 0
    w.internet.advance(5.0)
    assert producer.resumed == 1, "acknowledged below the low-water mark: resumed"
    assert bytes(servers.built[0].received) == b"a" * 50_000 + b"b" * 50_000
    w.stop()


def test_a_stream_goes_on_across_a_new_path_after_the_nat_forgot_the_binding() -> None:
    w = build_world(
        {
            "alice": ("port-restricted-cone", sim.PortAllocation.RANDOM),
            "bob": ("port-restricted-cone", sim.PortAllocation.PRESERVING),
        },
        World,
        seed=3,
        keepalive_interval=4.0,
        keepalive_timeout=1.0,
    )
    servers = Servers()
    alice, bob, connection = connected(w, servers)
    client = Recorder()
    w.internet.run_until(connection.open_stream(client))
    client.transport.write(b"before ")
    w.internet.advance(5.0)
    at_bob = bob.connections["alice"]
    first_path, first_session = at_bob.path, connection.session_id
    quic = connection.streams.driver.quic
    w.nats["alice"].flush()
    client.transport.write(b"during ")
    w.internet.advance(12.0)
    assert connection.session_id != first_session and at_bob.path != first_path
    client.transport.write(b"after")
    w.internet.advance(3.0)
    assert bytes(client.received) == b"before during after"
    assert client.lost is None and servers.built[0].lost is None, "no stream was reset"
    assert connection.streams.driver.quic is quic, "the same QUIC connection"
    assert len(servers.built) == 1
    w.stop()


def test_a_path_change_restarts_congestion_control_from_the_new_rtt() -> None:
    w = world()
    alice, bob, connection = connected(w, Servers(Recorder))
    client = Recorder()
    w.internet.run_until(connection.open_stream(client))
    for _ in range(20):
        client.transport.write(b"z" * 20_000)
        w.internet.advance(0.2)
    loss = connection.streams.driver.quic._loss
    grown = loss.congestion_window
    assert grown > 12_000 and loss._rtt_initialized
    connection.move(connection.remote, connection.local_kind, 0.25, connection.base)
    assert loss.congestion_window < grown
    assert loss.congestion_window == 10 * 1200, "aioquic's initial window"
    assert not loss._rtt_initialized and loss._rtt_initial == 0.25
    client.transport.write(b"after the move")
    w.internet.advance(2.0)
    assert client.lost is None
    w.stop()


def test_a_peer_showing_another_key_over_quic_is_refused_every_time() -> None:
    w = world()
    servers = Servers()
    alice, bob, connection = connected(w, servers)
    # bob's QUIC shows another key than the one it punched with
    bob.connections["alice"].streams._identity = Identity.generate()
    connection.streams.close()
    connection.streams.closed = False
    for _ in range(2):
        failed = connection.open_stream(Recorder())
        w.internet.advance(2.0)
        failure = failure_of(failed)
        assert failure.check(KeyMismatch)
    assert alice.streams.stats.key_mismatches == 2
    assert servers.built == []
    w.stop()


def test_a_client_showing_another_key_is_refused_by_the_server() -> None:
    w = world()
    servers = Servers()
    alice, bob, connection = connected(w, servers)
    connection.streams._identity = Identity.generate()
    connection.streams.close()
    connection.streams.closed = False
    client = Recorder()
    # TLS 1.3's client is done before the server has checked its
    # certificate: the stream may open, and then fails.
    connection.open_stream(client).addCallback(lambda p: p.transport.write(b"let me in"))
    w.internet.advance(3.0)
    assert client.lost is not None and client.lost.check(KeyMismatch)
    assert bob.streams.stats.key_mismatches == 1
    assert servers.built == []
    w.stop()


def failure_of(d: Any) -> Failure:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and isinstance(results[0], Failure), results
    return results[0]


def test_a_dead_path_fails_the_streams_after_the_idle_timeout() -> None:
    w = world(streams=StreamSettings(idle_timeout=10.0), enable_keepalive=False)
    servers = Servers()
    alice, bob, connection = connected(w, servers)
    client = Recorder()
    w.internet.run_until(connection.open_stream(client))
    client.transport.write(b"hello")
    w.internet.advance(1.0)
    w.internet.loss = 1.0
    client.transport.write(b"into the void")
    w.internet.advance(30.0)
    assert client.lost is not None and client.lost.check(StreamIdleTimeout)
    w.stop()


def test_closing_the_connection_fails_its_streams() -> None:
    w = world()
    servers = Servers()
    alice, bob, connection = connected(w, servers)
    client = Recorder()
    w.internet.run_until(connection.open_stream(client))
    client.transport.write(b"hello")
    w.internet.advance(1.0)
    alice.close("bob")
    assert client.lost is not None and client.lost.check(StreamsClosed)
    assert failure_of(connection.open_stream(Recorder())).check(StreamsClosed)
    w.stop()


def test_streams_are_refused_without_a_factory() -> None:
    w = world()
    alice, bob, connection = connected(w, None)
    client = Recorder()
    w.internet.run_until(connection.open_stream(client))
    client.transport.write(b"anyone there?")
    w.internet.advance(2.0)
    assert bob.streams.stats.streams_refused == 1
    assert client.lost is not None and client.lost.check(StreamReset)
    w.stop()


def test_quic_from_a_stranger_allocates_nothing_and_garbage_from_the_peer_is_counted() -> None:
    w = world(streams=StreamSettings(eager=False))
    alice, bob, connection = connected(w, Servers())
    initial = bytes([0xC0]) + b"\x00\x00\x00\x01" + b"\x08" + b"d" * 8 + b"\x08" + b"s" * 8
    initial += b"\x00" * (1200 - len(initial))
    bob.mux.datagramReceived(initial, ("203.0.113.77", 4000))
    assert bob.streams.stats.dropped_unknown_peer == 1
    assert bob.connections["alice"].streams.driver is None, "no QUIC connection made"
    # From the peer's own path: garbage is dropped and counted, never raised.
    path = bob.connections["alice"].remote_address
    bob.mux.datagramReceived(b"\x40", path)
    bob.mux.datagramReceived(b"\x7f" + b"\xff" * 30, path)
    client = Recorder()
    w.internet.run_until(connection.open_stream(client))
    bob.mux.datagramReceived(b"\xff" * 1300, path)
    bob.mux.datagramReceived(b"\x41", path)
    client.transport.write(b"still fine")
    w.internet.advance(1.0)
    assert bob.streams.stats.dropped_unexpected == 2
    assert bob.streams.stats.dropped_malformed >= 1
    assert bytes(client.received) == b"still fine"
    w.stop()


def test_endpoints_carry_an_unchanged_twisted_protocol_both_ways() -> None:
    from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
    from twisted.protocols.basic import LineReceiver

    from twisted_nat.streams.endpoints import PeerEndpoint, PeerServerEndpoint

    class Shout(LineReceiver):
        def lineReceived(self, line: bytes) -> None:
            self.sendLine(line.upper())

    class Ask(LineReceiver):
        def __init__(self) -> None:
            self.lines: list[bytes] = []

        def connectionMade(self) -> None:
            self.sendLine(b"hello bob")

        def lineReceived(self, line: bytes) -> None:
            self.lines.append(line)

    w = world()
    alice, bob, _ = connected(w, None)
    server = PeerServerEndpoint(bob)
    assert IStreamServerEndpoint.providedBy(server)
    port: Any = w.internet.run_until(server.listen(Factory.forProtocol(Shout)))
    assert port.getHost().key == bob.key
    assert failure_of(PeerServerEndpoint(bob).listen(Factory.forProtocol(Shout)))
    client = PeerEndpoint(alice, "bob")
    assert IStreamClientEndpoint.providedBy(client)
    asking: Any = w.internet.run_until(client.connect(Factory.forProtocol(Ask)))
    w.internet.advance(1.0)
    assert asking.lines == [b"HELLO BOB"]
    w.internet.run_until(port.stopListening())
    refused: Any = w.internet.run_until(client.connect(Factory.forProtocol(Ask)))
    w.internet.advance(1.0)
    assert refused.lines == []
    assert bob.streams.stats.streams_refused == 1
    w.stop()


def test_every_byte_arrives_in_order_over_a_lossy_reordering_path() -> None:
    w = world()
    servers = Servers(Recorder)
    alice, bob, connection = connected(w, servers)
    client = Recorder()
    w.internet.run_until(connection.open_stream(client))
    w.internet.loss, w.internet.jitter, w.internet.reorder = 0.1, 0.01, 0.05
    lost_before = w.internet.stats.lost
    payload = bytes(i * 7 % 251 for i in range(300_000))
    for start in range(0, len(payload), 10_000):
        client.transport.write(payload[start : start + 10_000])
        w.internet.advance(0.05)
    client.transport.loseWriteConnection()
    w.internet.advance(30.0)
    assert w.internet.stats.lost - lost_before > 20, "the path did lose datagrams"
    assert bytes(servers.built[0].received) == payload
    assert servers.built[0].lost is not None and servers.built[0].lost.check(ConnectionDone)
    w.stop()


def test_quic_datagrams_reach_the_connection_protocol_when_both_peers_take_them() -> None:
    import pytest
    from twisted.internet.error import MessageLengthError

    from twisted_nat.errors import ConfigurationError, StreamError

    on = StreamSettings(datagrams=True)
    w = world(streams=on)
    alice, bob, connection = connected(w, Servers())
    connection.streams.send_datagram(b"unreliable hello")
    bob.connections["alice"].streams.send_datagram(b"and back")
    w.internet.advance(1.0)
    assert [d for d, _ in w.apps["bob"][0].received] == [b"unreliable hello"]
    assert [d for d, _ in w.apps["alice"][0].received] == [b"and back"]
    assert bob.streams.stats.datagrams_received == 1
    with pytest.raises(MessageLengthError):
        connection.streams.send_datagram(b"x" * 1200)
    w.stop()

    w = world(peer_options={"alice": {"streams": on}})
    alice, bob, connection = connected(w, Servers())
    w.internet.run_until(connection.open_stream(Recorder()))
    with pytest.raises(StreamError):
        connection.streams.send_datagram(b"bob takes none")
    with pytest.raises(ConfigurationError):
        bob.connections["alice"].streams.send_datagram(b"off here")
    w.stop()


def test_an_offerer_that_takes_no_streams_makes_no_quic_until_it_opens_one() -> None:
    """
    A handshake costs both peers CPU and each end tens of kilobytes: an
    offerer without a stream factory (it would refuse the peer's streams)
    connects QUIC only at its first stream; one given a factory later
    connects then, so that the peer may open the first stream.
    """
    w = world()
    alice, bob, connection = connected(w, Servers())
    w.internet.advance(2.0)
    assert connection.streams.driver is None
    assert bob.streams.stats.received == 0
    alice.streams.factory = Servers()
    w.internet.advance(1.0)
    assert connection.streams.driver is not None and connection.streams.ready
    from_bob = Recorder()
    w.internet.run_until(bob.open_stream("alice", from_bob))
    from_bob.transport.write(b"now bob may speak first")
    w.internet.advance(1.0)
    assert bytes(from_bob.received) == b"now bob may speak first"
    w.stop()
