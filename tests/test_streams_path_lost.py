"""
Streams whose peer is gone fail once the peer connection has been
reconnecting for C{path_lost_timeout}, long before QUIC's idle timeout;
a path found again within it keeps them.
"""

from __future__ import annotations

from typing import Any

from tests.support.world import World, build_world
from tests.test_streams import FULL_CONE, Recorder, Servers, connected
from twisted_nat import testing as sim
from twisted_nat.errors import PathLost
from twisted_nat.streams import StreamSettings


def world(**options: Any) -> World:
    return build_world(
        {"alice": ("port-restricted-cone", sim.PortAllocation.RANDOM), "bob": FULL_CONE},
        World,
        seed=5,
        **options,
    )


def test_a_peer_gone_for_good_fails_the_streams_of_both_sides_before_the_idle_timeout() -> None:
    w = world(streams=StreamSettings(idle_timeout=60.0, path_lost_timeout=15.0))
    servers = Servers()
    alice, bob, connection = connected(w, servers)
    client = Recorder()
    w.internet.run_until(connection.open_stream(client))
    for _ in range(10):
        client.transport.write(b"x" * 5000)
        w.internet.advance(0.1)
    [server] = servers.built
    w.internet.loss = 1.0  # alice's network, or alice, is gone
    for _ in range(300):  # 30 s, half the idle timeout
        if client.lost is None:
            client.transport.write(b"x" * 5000)
        w.internet.advance(0.1)
    assert client.lost is not None and client.lost.check(PathLost), client.lost
    assert server.lost is not None and server.lost.check(PathLost), server.lost
    assert "was lost and not found again in 15 s" in str(server.lost.value)
    w.stop()


def test_reconnecting_for_less_than_the_bound_keeps_the_streams() -> None:
    w = world(streams=StreamSettings(path_lost_timeout=20.0))
    servers = Servers()
    alice, bob, connection = connected(w, servers)
    client = Recorder()
    w.internet.run_until(connection.open_stream(client))
    client.transport.write(b"before ")
    w.internet.advance(1.0)
    [server] = servers.built
    at_bob = bob.connections["alice"]
    for seconds in (15.0, 19.0):
        at_bob.reconnecting = True
        at_bob.state_changed()
        w.internet.advance(seconds)
        at_bob.reconnecting = False
        at_bob.state_changed()
    client.transport.write(b"after")
    w.internet.advance(2.0)
    assert server.lost is None and client.lost is None
    assert bytes(client.received) == b"before after"
    at_bob.reconnecting = True
    at_bob.state_changed()
    w.internet.advance(20.5)
    assert server.lost is not None and server.lost.check(PathLost)
    w.internet.advance(1.0)
    assert client.lost is not None, "the peer was told"
    w.stop()
