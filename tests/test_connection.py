"""
Application data over a punched path: encrypted and authenticated frames,
nothing of the payload on the wire, forgeries and replays refused, many
peers.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
import pytest

from tests.fakes import Collector
from tests.test_punch import Peer, make_internet, make_peer
from twisted_nat import control
from twisted_nat.bases import SHARED, relay_base
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.ciphers import CipherCache
from twisted_nat.connection import (
    AppDataRouter,
    ConnectionClosed,
    PeerConnection,
    SequenceExhausted,
)
from twisted_nat.control import SessionKeys


@attrs.define
class Connected:
    internet: Any
    alice: Peer
    bob: Peer
    conn_a: PeerConnection
    conn_b: PeerConnection
    app_a: Collector
    app_b: Collector
    routers: list[AppDataRouter]


def connected(kind_a: str = "port-restricted", kind_b: str = "full") -> Connected:
    internet = make_internet()
    alice, bob = make_peer(internet, kind_a, 1), make_peer(internet, kind_b, 2)
    routers = []
    for peer in (alice, bob):
        router = AppDataRouter()
        router.attach(peer.mux)
        routers.append(router)
    session, secret = os.urandom(16), os.urandom(32)
    da = alice.puncher.punch_hole(
        5000, bob.candidates, session, secret=secret, controlling=True,
        local_candidates=alice.candidates,
    )  # fmt: skip
    db = bob.puncher.punch_hole(
        5000, alice.candidates, session, secret=secret, controlling=False,
        local_candidates=bob.candidates,
    )  # fmt: skip
    result_a = internet.run_until(da)
    result_b = internet.run_until(db)
    conn_a = PeerConnection(
        routers[0], SessionKeys.derive(session, secret, True), result_a.remote, peer="bob"
    )
    conn_b = PeerConnection(
        routers[1], SessionKeys.derive(session, secret, False), result_b.remote, peer="alice"
    )
    app_a, app_b = Collector(), Collector()
    conn_a.set_protocol(app_a)
    conn_b.set_protocol(app_b)
    return Connected(internet, alice, bob, conn_a, conn_b, app_a, app_b, routers)


def connected_pair(kind_a: str = "port-restricted", kind_b: str = "full") -> tuple[Any, ...]:
    c = connected(kind_a, kind_b)
    return c.internet, c.conn_a, c.conn_b, c.app_a, c.app_b, c.routers


def test_datagrams_flow_both_ways_and_only_payloads_reach_the_app():
    internet, conn_a, conn_b, app_a, app_b, routers = connected_pair()
    app_a.transport.write(b"hello bob")
    conn_b.write(b"hello alice")
    internet.advance(0.1)
    assert [d for d, _ in app_b.received] == [b"hello bob"]
    assert [d for d, _ in app_a.received] == [b"hello alice"]
    assert app_b.received[0][1] == conn_b.remote_address
    assert routers[1].stats.delivered == 1


def test_data_flows_on_when_the_router_keeps_fewer_ciphers_than_it_has_connections():
    c = connected()
    for router in c.routers:
        router.ciphers = CipherCache(capacity=1)
    # A second connection on bob's router, with keys of its own, takes turns with the first.
    other = PeerConnection(
        c.routers[1], SessionKeys.derive(os.urandom(16), os.urandom(32), True),
        Candidate(CandidateType.HOST, "203.0.113.9", 4000), peer="carol",
    )  # fmt: skip
    for n in range(3):
        c.conn_a.write(b"to bob %d" % n)
        c.internet.advance(0.05)
        c.conn_b.write(b"to alice %d" % n)
        other.write(b"to carol")
        c.internet.advance(0.05)
    assert [d for d, _ in c.app_b.received] == [b"to bob 0", b"to bob 1", b"to bob 2"]
    assert [d for d, _ in c.app_a.received] == [b"to alice 0", b"to alice 1", b"to alice 2"]
    assert len(c.routers[1].ciphers) == 1
    other.close()
    c.conn_b.close()
    assert len(c.routers[1].ciphers) == 0


def test_forged_and_replayed_frames_are_dropped():
    internet, conn_a, conn_b, app_a, app_b, routers = connected_pair()
    router_b = routers[1]
    # an attacker spoofing alice's address, without the key
    stranger = SessionKeys.derive(conn_a.session_id, os.urandom(32), True)
    forged = control.encrypt_frame(stranger.send_cipher(), 1, b"evil")
    router_b.datagramReceived(forged, conn_b.remote_address)
    # a frame alice really sent, captured and replayed
    genuine = control.encrypt_frame(conn_a.keys.send_cipher(), 77, b"once")
    router_b.datagramReceived(genuine, conn_b.remote_address)
    router_b.datagramReceived(genuine, conn_b.remote_address)
    # bob's own frame reflected back at him: the other direction's key
    reflected = control.encrypt_frame(conn_b.keys.send_cipher(), 78, b"mirror")
    router_b.datagramReceived(reflected, conn_b.remote_address)
    # from nobody we know
    router_b.datagramReceived(genuine, ("203.0.113.99", 1))
    assert [d for d, _ in app_b.received] == [b"once"]
    assert router_b.stats.dropped_bad_tag == 2
    assert router_b.stats.dropped_replay == 1
    assert router_b.stats.dropped_unknown_peer == 1


def test_nothing_of_the_payload_is_on_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every datagram the simulated internet carries, captured: no 8 bytes of the plaintext."""
    c = connected()
    wire: list[bytes] = []
    send = c.internet._send

    def capture(sender: Any, source: Any, destination: Any, data: bytes) -> None:
        wire.append(data)
        send(sender, source, destination, data)

    monkeypatch.setattr(c.internet, "_send", capture)
    secret = b"attack at dawn; the password is hunter2, and the vault code 0451. " * 3
    c.conn_a.write(secret)
    c.conn_b.write(secret[::-1])
    c.internet.advance(0.1)
    assert [d for d, _ in c.app_b.received] == [secret]
    assert [d for d, _ in c.app_a.received] == [secret[::-1]]
    assert len(wire) == 2
    windows = {text[i : i + 8] for text in (secret, secret[::-1]) for i in range(len(text) - 7)}
    for datagram in wire:
        assert len(datagram) == len(secret) + control.FRAME_OVERHEAD
        assert secret not in datagram
        assert not any(window in datagram for window in windows)


def test_tampered_frames_are_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    c = connected()
    router_b = c.routers[1]
    wire: list[bytes] = []
    monkeypatch.setattr(c.routers[0], "send", lambda frame, *where: wire.append(frame))
    c.conn_a.write(b"the genuine article")
    [frame] = wire
    header_bit = bytes([frame[0]]) + bytes([frame[1] ^ 0x80]) + frame[2:]
    ciphertext_bit = frame[:12] + bytes([frame[12] ^ 0x01]) + frame[13:]
    for tampered in (header_bit, ciphertext_bit, frame[:-1], frame[:-16], frame[:9]):
        router_b.datagramReceived(tampered, c.conn_b.remote_address)
    assert c.app_b.received == []
    assert router_b.stats.dropped_bad_tag == 5
    router_b.datagramReceived(frame, c.conn_b.remote_address)
    router_b.datagramReceived(frame, c.conn_b.remote_address)
    assert [d for d, _ in c.app_b.received] == [b"the genuine article"]
    assert router_b.stats.dropped_replay == 1, "refused once it had verified"


def test_a_keepalive_reflected_to_its_sender_is_not_answered() -> None:
    c = connected()
    keeper = c.alice.puncher.keeper
    _, own = control.keepalive(c.conn_a.keys)
    keeper.datagramReceived(own, c.conn_a.remote_address)
    assert keeper.stats.dropped_bad_mac == 1
    _, bobs = control.keepalive(c.conn_b.keys)
    keeper.datagramReceived(bobs, c.conn_a.remote_address)
    assert keeper.stats.dropped_bad_mac == 1, "bob's own KEEP_ALIVE is taken"


def test_sending_stops_before_a_sequence_number_could_repeat() -> None:
    c = connected()
    c.conn_a._sequence = control.MAX_SEQUENCE - 1
    c.conn_a.write(b"the last")
    with pytest.raises(SequenceExhausted):
        c.conn_a.write(b"one too many")
    c.internet.advance(0.1)
    assert [d for d, _ in c.app_b.received] == [b"the last"]
    c.conn_a.rebind(
        SessionKeys.derive(os.urandom(16), os.urandom(32), True), c.conn_a.remote, None, 0.01, 0.5
    )
    c.conn_a.write(b"new keys, new numbers")


def test_close_stops_sending_and_delivery():
    internet, conn_a, conn_b, app_a, app_b, routers = connected_pair()
    closed: list[None] = []
    conn_b.when_closed().addCallback(closed.append)
    conn_b.close()
    assert closed == [None]
    assert app_b.stopped == 1
    with pytest.raises(ConnectionClosed):
        conn_b.write(b"late")
    conn_a.write(b"anyone?")
    internet.advance(0.1)
    assert app_b.received == []
    assert routers[1].stats.dropped_unknown_peer == 1


def test_replay_window():
    window = control.ReplayWindow()
    assert window.accept(1) and window.accept(3) and window.accept(2)
    assert not window.accept(2)
    assert window.accept(100)
    assert not window.accept(36), "older than the 64-wide window"
    assert window.accept(37)
    assert not window.accept(0)


def keep_alive_both(c: Connected, interval: float, timeout: float = 1.0) -> list[Any]:
    lost: list[Any] = []
    for peer, conn in ((c.alice, c.conn_a), (c.bob, c.conn_b)):
        d = peer.puncher.maintain_binding(
            conn, conn.remote_address, interval=interval, timeout=timeout
        )
        d.addErrback(lost.append)
    return lost


def both_port_restricted(binding_timeout: float) -> Connected:
    c = connected("port-restricted", "port-restricted")
    for peer in (c.alice, c.bob):
        peer.host.behind.binding_timeout = binding_timeout
    return c


def test_keepalive_holds_a_short_lived_binding_open():
    """NAT bindings die after 10 s idle; probes every 4 s keep data flowing for 60 s."""
    c = both_port_restricted(10.0)
    lost = keep_alive_both(c, interval=4.0)
    for second in range(0, 60, 12):
        c.internet.advance(12.0)
        c.conn_b.write(b"tick %d" % second)
        c.internet.advance(0.1)
    assert len(c.app_a.received) == 5
    assert lost == []
    quality = c.conn_a.quality()
    assert quality is not None
    assert quality.loss == 0.0
    assert quality.rtt is not None and 0.005 < quality.rtt < 0.05
    c.alice.puncher.stop_binding(c.conn_a.session_id)
    c.bob.puncher.stop_binding(c.conn_b.session_id)


def test_without_keepalive_the_binding_dies():
    """The same NATs and traffic without keep-alive: the proof the mechanism matters."""
    c = both_port_restricted(10.0)
    c.internet.advance(12.0)
    c.conn_b.write(b"anyone there?")
    c.internet.advance(0.1)
    assert c.app_a.received == []


def test_a_vanished_peer_is_declared_lost():
    c = connected()
    lost: list[Any] = []
    d = c.alice.puncher.maintain_binding(
        c.conn_a, c.conn_a.remote_address, interval=2.0, timeout=0.5
    )
    d.addErrback(lost.append)
    c.internet.advance(5.0)
    assert lost == []
    for listening in c.bob.host.ports():  # bob's machine goes away
        listening.stopListening()
    c.internet.advance(30.0)
    assert len(lost) == 1
    assert "no answer" in str(lost[0].value)


def test_path_listeners_hear_moves_and_new_punches_once_each() -> None:
    c = connected()
    heard: list[tuple[Any, bool, Any]] = []
    c.conn_a.on_path_change(lambda conn: heard.append((conn.base, conn.relayed, conn.keys)))

    def broken(conn: PeerConnection) -> None:
        raise RuntimeError("an application's bug")

    c.conn_a.on_path_change(broken)
    old_keys, remote = c.conn_a.keys, c.conn_a.remote
    relay = relay_base(("203.0.113.200", 40001))
    c.conn_a.move(remote, None, 0.01, relay, relayed=True)
    assert heard == [(relay, True, old_keys)]
    new_keys = SessionKeys.derive(os.urandom(16), os.urandom(32), True)
    c.conn_a.rebind(new_keys, remote, None, 0.01, 0.5)
    assert heard[1:] == [(SHARED, False, new_keys)], "once, with the new keys in place"
    assert len(heard) == 2


def test_a_moved_connection_keeps_its_sequence_so_the_peer_takes_what_follows() -> None:
    c = connected()
    c.conn_a.write(b"one")
    c.conn_a.write(b"two")
    c.internet.advance(0.1)
    c.conn_a.move(c.conn_a.remote, None, 0.01)  # numbering restarting would replay 1
    c.conn_a.write(b"three")
    c.internet.advance(0.1)
    assert [data for data, _ in c.app_b.received] == [b"one", b"two", b"three"]
    assert c.routers[1].stats.dropped_replay == 0
