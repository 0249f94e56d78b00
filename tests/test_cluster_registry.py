"""
Names bound to keys in a real redis-server on loopback, shared by several nodes
(each its own L{RedisLink}): atomic claims under races, bindings that survive a
Redis restart, and a node that keeps answering for the names it knows while
Redis is away.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet import reactor as global_reactor

from tests.support.polling import until
from tests.support.redis import RedisServer, redis_fixtures
from twisted_nat.cluster.address import RedisAddress, parse_redis_address
from twisted_nat.cluster.link import RedisLink
from twisted_nat.cluster.registry import RedisRegistry
from twisted_nat.errors import ConfigurationError, RedisUnavailable, RegistryError
from twisted_nat.trust import Identity

reactor: Any = global_reactor
KEYS = [Identity.generate().public for _ in range(3)]
FAST = (0.05, 0.2)


redis_server, redis = redis_fixtures()


class Nodes:
    """Links (one per node) to a Redis, stopped at the end."""

    def __init__(self, server: RedisServer) -> None:
        self.server = server
        self.links: list[RedisLink] = []

    async def link(self) -> RedisLink:
        link = RedisLink(reactor, RedisAddress(self.server.endpoint), "test", lambda m: None,
                         retry=FAST)  # fmt: skip
        link.startService()
        self.links.append(link)
        await until(lambda: link.up)
        return link

    async def registries(self, count: int) -> list[RedisRegistry]:
        return [RedisRegistry(await self.link()) for _ in range(count)]

    def stop(self) -> defer.Deferred[Any]:
        return defer.gatherResults([link.stopService() for link in self.links])


@pytest.fixture
def nodes(redis: RedisServer) -> Iterator[Nodes]:
    n = Nodes(redis)
    yield n
    pytest_twisted.blockon(n.stop())


def test_redis_addresses_are_endpoints_or_urls():
    assert parse_redis_address("tcp:127.0.0.1:6379") == RedisAddress(
        "tcp:127.0.0.1:6379", 0, "tcp:127.0.0.1:6379"
    )
    assert parse_redis_address("redis://10.0.0.1/3").endpoint == "tcp:host=10.0.0.1:port=6379"
    assert parse_redis_address("redis://10.0.0.1/3").database == 3
    assert parse_redis_address("redis://[::1]:7000").endpoint == "tcp:host=\\:\\:1:port=7000"
    assert parse_redis_address("rediss://r.example:6380").endpoint.startswith("tls:")
    for bad in ("", "redis://:secret@host", "redis://host/x", "redis://host/99", "redis://:1"):
        with pytest.raises(ConfigurationError):
            parse_redis_address(bad)


@pytest_twisted.ensureDeferred
async def test_nodes_share_bindings_and_one_server_id(nodes):
    one, two = await nodes.registries(2)
    assert await one.server_id() == await two.server_id()
    assert await one.claim("alice", KEYS[0]) is True
    assert await one.claim("alice", KEYS[0]) is True  # again: still ours
    assert await two.claim("alice", KEYS[1]) is False
    assert await two.lookup("alice") == KEYS[0]
    assert await two.lookup("bob") is None
    assert await one.claim("al", KEYS[0]) is True
    assert await two.names_of(KEYS[0]) == ["al", "alice"]
    assert await two.release("alice", KEYS[1]) is False
    assert await two.release("alice", KEYS[0]) is True
    assert await one.lookup("alice") is None
    assert await one.names_of(KEYS[0]) == ["al"]
    assert await one.claim("alice", KEYS[1]) is True


@pytest_twisted.ensureDeferred
async def test_a_name_claimed_on_nodes_at_once_is_bound_once(nodes):
    registries = await nodes.registries(3)
    for round in range(100):
        name = f"race{round}"
        # Every claim is on the wire before any answer is read.
        claims = [r.claim(name, KEYS[i]) for i, r in enumerate(registries)]
        won = await defer.gatherResults(claims)
        assert sorted(won) == [False, False, True], (round, won)
        winner = KEYS[won.index(True)]
        assert {await r.lookup(name) for r in registries} == {winner}


@pytest_twisted.ensureDeferred
async def test_bindings_survive_a_redis_restart(nodes):
    (registry,) = await nodes.registries(1)
    server_id = await registry.server_id()
    for i in range(50):
        assert await registry.claim(f"peer{i}", KEYS[i % 3])
    nodes.server.restart()
    await until(lambda: registry.link.up)
    (other,) = await nodes.registries(1)  # a node that knows nothing from before
    assert await other.server_id() == server_id
    for i in range(50):
        assert await other.lookup(f"peer{i}") == KEYS[i % 3]
    assert await other.claim("peer7", KEYS[2]) is (KEYS[7 % 3] == KEYS[2])


@pytest_twisted.ensureDeferred
async def test_without_redis_a_node_answers_for_the_names_it_knows(nodes):
    registry, other = await nodes.registries(2)
    assert await registry.claim("alice", KEYS[0])
    assert await other.claim("bob", KEYS[1])
    assert await registry.lookup("bob") == KEYS[1]
    nodes.server.stop()
    await until(lambda: not registry.link.up)
    assert await registry.lookup("alice") == KEYS[0]
    assert await registry.lookup("bob") == KEYS[1]
    assert await registry.claim("alice", KEYS[0]) is True
    assert await registry.claim("alice", KEYS[2]) is False
    with pytest.raises(RedisUnavailable):
        await registry.claim("carol", KEYS[2])
    with pytest.raises(RedisUnavailable):
        await registry.lookup("carol")
    with pytest.raises(RedisUnavailable):
        await registry.release("alice", KEYS[0])
    # Back: what the cache said is what Redis says.
    nodes.server.start()
    await until(lambda: registry.link.up, timeout=10)
    assert await registry.claim("carol", KEYS[2]) is True
    assert await registry.lookup("alice") == KEYS[0]


@pytest_twisted.ensureDeferred
async def test_closed_and_bad_values(nodes):
    (registry,) = await nodes.registries(1)
    with pytest.raises(ValueError):
        await registry.claim("", KEYS[0])
    with pytest.raises(TypeError):
        await registry.claim("alice", "not a key")
    # Something in Redis that is no key is the store's failure, not ours to pass on.
    nodes.server.command("SET", "twisted-nat:name:mallory", "garbage")
    with pytest.raises(RegistryError, match="not a peer key"):
        await registry.lookup("mallory")
    await registry.close()
    with pytest.raises(RegistryError):
        await registry.lookup("alice")
