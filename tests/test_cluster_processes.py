"""
Rendezvous nodes as processes of their own (C{twistd -n nat server
--redis}) on loopback, with peers as processes of their own: a node killed
with SIGKILL, its peers registered and connected, leaves nothing behind
that stops them (benchmarks/README.md has how many seconds it takes).
"""

from __future__ import annotations

from tests.support.cluster_nodes import SAFETY, kill_a_node, nodes_on_loopback
from tests.support.redis import RedisServer, redis_fixtures

redis_server, redis = redis_fixtures()


def test_peers_of_a_node_killed_are_reached_through_another(redis: RedisServer) -> None:
    with nodes_on_loopback(redis.endpoint, 2) as (one, two):
        seconds = kill_a_node(one, two)
        assert one.process.returncode == -9 and two.process.poll() is None
    # Each step is bounded by SAFETY; this only says the figure is a time at all.
    assert 0 < seconds < SAFETY
