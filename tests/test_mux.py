"""The demultiplexer: one socket, each datagram to exactly one protocol."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from tests.fakes import Collector, RecordingUDPTransport
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.stun.message import Message, MessageClass, Method, encode, request

PEER = ("192.0.2.7", 5000)


def listening_mux():
    mux = UDPMultiplexer()
    mux.makeConnection(RecordingUDPTransport())
    return mux


def test_stun_routed_by_method_and_class():
    mux = listening_mux()
    client, server, channel = Collector(), Collector(), Collector()
    mux.add_stun(client, [Method.BINDING], [MessageClass.SUCCESS, MessageClass.ERROR])
    mux.add_stun(server, [Method.BINDING], [MessageClass.REQUEST])
    mux.add_range(channel, range(64, 80))
    req = request()
    resp = Message(Method.BINDING, MessageClass.SUCCESS, req.transaction_id)
    mux.datagramReceived(encode(req), PEER)
    mux.datagramReceived(encode(resp), PEER)
    mux.datagramReceived(b"\x40\x00\x00\x04data", PEER)
    assert [d for d, _ in server.received] == [encode(req)]
    assert [d for d, _ in client.received] == [encode(resp)]
    assert channel.received == [(b"\x40\x00\x00\x04data", PEER)]
    assert mux.stats.delivered == 3


def test_unclaimed_and_non_stun_are_dropped_and_counted():
    mux = listening_mux()
    client = Collector()
    mux.add_stun(client, [Method.BINDING])
    mux.datagramReceived(b"", PEER)
    mux.datagramReceived(b"\x00\x01short", PEER)
    mux.datagramReceived(b"\x41channel", PEER)
    mux.datagramReceived(encode(request(Method.ALLOCATE)), PEER)
    legacy = Message(Method.BINDING, MessageClass.REQUEST, b"\x00" * 12, (), b"\x00" * 4)
    mux.datagramReceived(encode(legacy), PEER)
    assert client.received == []
    assert mux.stats.dropped_unclaimed == 5


def test_rfc3489_messages_go_to_the_claimant():
    mux = listening_mux()
    server = Collector()
    mux.add_stun(server, [Method.BINDING], [MessageClass.REQUEST], rfc3489=True)
    legacy = Message(Method.BINDING, MessageClass.REQUEST, b"\x00" * 12, (), b"\x00" * 4)
    mux.datagramReceived(encode(legacy), PEER)
    assert len(server.received) == 1


def test_sub_transport_writes_through_the_shared_socket():
    mux = listening_mux()
    a, b = Collector(), Collector()
    ta = mux.add_stun(a, [Method.BINDING])
    tb = mux.add_range(b, [0xC0])
    ta.write(b"one", PEER)
    tb.write(b"two", ("192.0.2.8", 1))
    assert mux.transport.written == [(b"one", PEER), (b"two", ("192.0.2.8", 1))]
    assert ta.getHost() == mux.transport.getHost()
    with pytest.raises(ValueError):
        ta.write(b"no address")
    with pytest.raises(RuntimeError):
        ta.connect("192.0.2.9", 1)


def test_conflicting_routes_are_refused():
    mux = listening_mux()
    mux.add_stun(Collector(), [Method.BINDING], [MessageClass.REQUEST])
    with pytest.raises(ValueError):
        mux.add_stun(Collector(), [Method.BINDING])
    mux.add_range(Collector(), [0x80])
    with pytest.raises(ValueError):
        mux.add_range(Collector(), [0x80])
    with pytest.raises(ValueError):
        mux.add_range(Collector(), [0x01])


def test_remove_detaches_and_stops_the_protocol():
    mux = listening_mux()
    proto = Collector()
    transport = mux.add_stun(proto, [Method.BINDING])
    mux.add_range(proto, [0xC1])
    assert proto.started == 1, "a protocol is connected once however many routes it has"
    transport.stopListening()
    assert proto.stopped == 1
    mux.datagramReceived(encode(request()), PEER)
    mux.datagramReceived(b"\xc1x", PEER)
    assert proto.received == []
    # its routes are free again
    mux.add_stun(Collector(), [Method.BINDING])


def test_stopping_the_mux_stops_every_protocol():
    mux = listening_mux()
    protos = [Collector(), Collector()]
    mux.add_stun(protos[0], [Method.BINDING])
    mux.add_range(protos[1], [0xC0])
    mux.doStart()
    mux.doStop()
    assert [p.stopped for p in protos] == [1, 1]
    assert mux.transport is None


def test_write_before_listening_is_an_error():
    mux = UDPMultiplexer()
    transport = mux.add_range(Collector(), [0xC0])
    with pytest.raises(RuntimeError):
        transport.write(b"x", PEER)


def test_first_bytes_64_to_79_are_channel_data_from_a_turn_server_and_quic_from_peers():
    """RFC 9443: ChannelData and QUIC short headers share 64-79; the source tells them apart."""
    from twisted_nat.mux import QUIC_FIRST_BYTES
    from twisted_nat.turn import TURNClient

    mux = listening_mux()
    quic = Collector()
    turn = TURNClient.on_multiplexer(mux, reactor=Clock())
    mux.add_range(quic, QUIC_FIRST_BYTES)
    server = ("203.0.113.5", 3478)
    turn._allocating.add(server)  # as while an Allocate is under way
    channel_data = b"\x40\x00\x00\x04data"
    assert mux.route(channel_data, server) is turn
    assert mux.route(channel_data, PEER) is quic
    assert mux.route(channel_data) is quic, "without a source, nobody is a server"
    assert mux.route(b"\x80rtp", PEER) is None, "128-191 is RTP's, not QUIC's"
    assert mux.route(b"\xc3long", PEER) is quic
    mux.datagramReceived(channel_data, PEER)
    assert quic.received == [(channel_data, PEER)]
    mux.remove(turn)
    assert mux.route(channel_data, server) is quic


def test_a_range_is_claimed_once_for_everyone_and_once_by_source():
    mux = listening_mux()
    mux.add_range(Collector(), [0x41], sources=lambda addr: True)
    with pytest.raises(ValueError):
        mux.add_range(Collector(), [0x41], sources=lambda addr: False)
    mux.add_range(Collector(), [0x41])
