"""
Path MTU discovery for QUIC streams: the search (no clock), and on the
simulated internet, whose paths carry datagrams up to C{max_payload}.
"""

from __future__ import annotations

import socket
import sys
from types import SimpleNamespace
from typing import Any

import pytest
from aioquic.quic.recovery import QuicPacketPacer

from tests.test_streams import Echo, Recorder, Servers, connected, world
from twisted_nat.bases import SHARED
from twisted_nat.errors import ConfigurationError
from twisted_nat.streams import StreamSettings, _aioquic
from twisted_nat.streams.pmtu import MAX_PROBES, SizeSearch, unfragmented


def test_the_search_confirms_each_acknowledged_size_in_turn() -> None:
    search = SizeSearch(1200, (1452, 1472))
    assert search.next_probe() == 1452
    assert search.next_probe() is None, "one probe at a time"
    assert search.result(1452, True) and search.confirmed == 1452
    assert search.next_probe() == 1472
    assert search.result(1472, True) and search.confirmed == 1472
    assert search.next_probe() is None


def test_a_size_lost_max_probes_times_ends_the_search_at_the_last_confirmed() -> None:
    search = SizeSearch(1200, (1452, 1472))
    search.next_probe()
    search.result(1452, True)
    for _ in range(MAX_PROBES):
        assert search.next_probe() == 1472
        assert not search.result(1472, False)
    assert search.next_probe() is None and search.confirmed == 1452


def test_a_restart_goes_back_to_the_base_and_ignores_the_old_probe() -> None:
    search = SizeSearch(1200, (1300, 1452))
    search.next_probe()
    search.result(1300, True)
    assert search.next_probe() == 1452
    search.restart()
    assert search.confirmed == 1200
    assert not search.result(1452, True), "a probe from before the restart"
    assert search.next_probe() == 1300


def test_probe_sizes_must_ascend() -> None:
    with pytest.raises(ConfigurationError):
        StreamSettings(probe_sizes=(1472, 1452))


def echoing(w: Any) -> tuple[Any, Recorder, Any]:
    alice, bob, connection = connected(w, Servers(Echo))
    client = Recorder()
    w.internet.run_until(connection.open_stream(client))
    return connection, client, bob.connections["alice"]


def size_of(connection: Any) -> int:
    return _aioquic.datagram_size(connection.streams.driver.quic)


def test_both_sides_use_the_largest_size_the_path_carries_and_never_more() -> None:
    w = world()
    w.internet.max_payload = 1460
    connection, client, at_bob = echoing(w)
    w.internet.advance(5.0)
    assert size_of(connection) == 1452 and size_of(at_bob) == 1452
    lost_before = w.internet.stats.lost
    payload = bytes(range(256)) * 400
    client.transport.write(payload)
    w.internet.advance(5.0)
    assert bytes(client.received) == payload
    assert w.internet.stats.lost == lost_before, "no datagram but the probes was too large"
    w.stop()


def test_without_probe_sizes_datagrams_stay_at_1200() -> None:
    w = world(streams=StreamSettings(probe_sizes=()))
    connection, client, at_bob = echoing(w)
    w.internet.advance(5.0)
    assert size_of(connection) == 1200 and size_of(at_bob) == 1200
    w.stop()


def test_a_path_change_starts_again_from_1200_and_probes_the_new_path() -> None:
    w = world()
    connection, client, at_bob = echoing(w)
    w.internet.advance(5.0)
    assert size_of(connection) == 1472
    w.internet.max_payload = 1300
    connection.move(connection.remote, connection.local_kind, 0.01, connection.base)
    assert size_of(connection) == 1200
    payload = bytes(range(256)) * 400
    client.transport.write(payload)
    w.internet.advance(10.0)
    assert bytes(client.received) == payload and client.lost is None
    assert size_of(connection) == 1200
    w.stop()


def test_a_path_that_stops_carrying_large_datagrams_falls_back_to_1200() -> None:
    w = world()
    connection, client, at_bob = echoing(w)
    w.internet.advance(5.0)
    assert size_of(connection) == 1472
    w.internet.max_payload = 1300  # no path change: a black hole
    payload = bytes(range(256)) * 400
    client.transport.write(payload)
    w.internet.advance(20.0)
    assert size_of(connection) == 1200
    assert bytes(client.received) == payload and client.lost is None
    w.stop()


def sent_after_a_late_wakeup(pacer: QuicPacketPacer) -> int:
    pacer.update_rate(congestion_window=1_000_000, smoothed_rtt=0.001)
    sent = 0
    while pacer.next_send_time(now=0.001) is None and sent < 10_000:
        pacer.update_after_send(now=0.001)
        sent += 1
    return sent


def test_the_pacer_sends_what_its_rate_allowed_while_a_timer_came_a_millisecond_late() -> None:
    stock = sent_after_a_late_wakeup(QuicPacketPacer(max_datagram_size=1200))
    ours = sent_after_a_late_wakeup(_aioquic.CoarsePacer(max_datagram_size=1200))
    assert stock <= 16, "aioquic's bucket: 16 packets at most"
    assert ours >= 800, "a millisecond at 1 MB per millisecond is 833 packets"


class _Port:
    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's socket options")
def test_probes_leave_with_the_dont_fragment_bit_and_other_datagrams_as_before() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        port = _Port(sock)
        bases = SimpleNamespace(transport_of=lambda base: port)
        connection: Any = SimpleNamespace(router=SimpleNamespace(bases=bases), base=SHARED)
        level, name = socket.IPPROTO_IP, 10  # IP_MTU_DISCOVER
        before = sock.getsockopt(level, name)
        assert before != 2
        with unfragmented(connection):
            assert sock.getsockopt(level, name) == 2  # IP_PMTUDISC_DO
        assert sock.getsockopt(level, name) == before
    finally:
        sock.close()


def test_a_new_quic_connection_probes_afresh() -> None:
    w = world()
    connection, client, at_bob = echoing(w)
    w.internet.advance(5.0)
    first = connection.streams.driver
    assert size_of(connection) == 1472
    connection.streams.close()
    connection.streams.closed = False
    again = Recorder()
    w.internet.run_until(connection.open_stream(again))
    w.internet.advance(5.0)
    assert connection.streams.driver is not first
    assert size_of(connection) == 1472
    w.stop()
