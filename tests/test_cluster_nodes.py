"""
Rendezvous nodes sharing their peers through a real redis-server on loopback:
peers on different nodes reach each other exactly as on one node, the newest
connection of a key wins across nodes, a node keeps serving its own peers while
Redis is away, and what other nodes (or anyone with access to Redis) publish is
checked before it is used.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from zope.interface import provider

from tests.fakes import Collector
from tests.support.polling import until
from tests.support.redis import RedisServer, redis_fixtures
from tests.test_rendezvous import (
    BOB_CANDIDATES,
    FAST_RETRY,
    KEYS,
    answering,
    client_endpoint,
    offer_from,
)
from twisted_nat.cluster import messages
from twisted_nat.cluster.address import RedisAddress
from twisted_nat.cluster.node import ClusterNode, channel_of
from twisted_nat.errors import (
    DuplicateName,
    PeerUnavailable,
    RegisteredElsewhere,
    RendezvousBusy,
    UnknownPeer,
)
from twisted_nat.metrics.rendezvous import RendezvousCollector
from twisted_nat.rendezvous import RendezvousClient, RendezvousService, make_rendezvous_service
from twisted_nat.rendezvous.quotas import ServerLimits
from twisted_nat.service import NATTraversalService, PeerSettings
from twisted_nat.trust import Identity

reactor: Any = global_reactor
FAST = (0.05, 0.2)
SLOW_RETRY = backoffPolicy(initialDelay=60.0, maxDelay=60.0, jitter=lambda: 0.0)


redis_server, redis = redis_fixtures()


class Cluster:
    """Rendezvous nodes on one Redis, and clients of them; all stopped at the end."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        self.nodes: list[tuple[RendezvousService, ClusterNode]] = []
        self.clients: list[RendezvousClient] = []
        self.clean_ups: list[Callable[[], object]] = []

    async def node(
        self, endpoint: str = "tcp:0:interface=127.0.0.1", limits: ServerLimits | None = None
    ) -> RendezvousService:
        address = RedisAddress(self.redis.endpoint, 0, "test")
        cluster = ClusterNode(reactor, address, 2.0, retry=FAST)
        service = make_rendezvous_service(
            reactor, endpoint, relay_timeout=2.0, cluster=cluster, limits=limits
        )
        service.startService()
        self.nodes.append((service, cluster))
        await until(lambda: cluster.up)
        return service

    def client(self, service: RendezvousService, name: str, **kwargs: Any) -> RendezvousClient:
        kwargs.setdefault("retry_policy", FAST_RETRY)
        identity = kwargs.pop("identity", None) or KEYS[name]
        client = RendezvousClient(reactor, client_endpoint(service), name, identity, **kwargs)
        client.startService()
        self.clients.append(client)
        return client

    def stop(self) -> defer.Deferred[Any]:
        for clean_up in self.clean_ups:
            clean_up()
        stopping = [c.close() for c in self.clients]
        stopping += [s.stopService() for s, _ in self.nodes if s.running]
        return defer.gatherResults(stopping)


@pytest.fixture
def cluster(redis: RedisServer) -> Iterator[Cluster]:
    c = Cluster(redis)
    yield c
    pytest_twisted.blockon(c.stop())


def node_of(service: RendezvousService) -> ClusterNode:
    cluster = service.factory.directory.cluster
    assert isinstance(cluster, ClusterNode)
    return cluster


@pytest_twisted.ensureDeferred
async def test_peers_on_two_nodes_reach_each_other_as_on_one(cluster):
    one, two = await cluster.node(), await cluster.node()
    alice, bob = cluster.client(one, "alice"), cluster.client(two, "bob")
    received: list[Any] = []
    bob.set_offer_handler(answering(received=received))
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])

    assert await alice.lookup("bob") == KEYS["bob"].public
    offer = offer_from()
    answer = await alice.connect(offer)
    assert answer.candidates == BOB_CANDIDATES and answer.from_key == KEYS["bob"].public
    # Every signed byte intact; each node adds where its own peer connects from.
    assert received[0].signature == offer.signature and received[0].seen_from == "127.0.0.1"
    assert answer.seen_from == "127.0.0.1"
    assert one.factory.stats.offers_routed == 1
    assert two.factory.stats.offers_from_nodes == 1
    metrics = {
        sample.name: sample.value
        for family in RendezvousCollector(one.factory).collect()
        for sample in family.samples
        if not sample.labels
    }
    assert metrics["twisted_nat_rendezvous_redis_up"] == 1
    assert metrics["twisted_nat_rendezvous_offers_routed_total"] == 1
    assert metrics["twisted_nat_rendezvous_redis_round_trip_seconds_count"] >= 3
    # By key alone, and back the other way.
    await alice.connect(offer_from(to=None, to_key=KEYS["bob"].public))
    alice.set_offer_handler(answering(name="alice"))
    assert (await bob.connect(offer_from("bob", "alice"))).from_name == "alice"
    # A name bound at one node is bound at all of them.
    mallory = cluster.client(two, "alice", identity=KEYS["mallory"], retry_policy=SLOW_RETRY)
    with pytest.raises(DuplicateName):
        await mallory.when_registered()


@pytest_twisted.ensureDeferred
async def test_three_nodes_each_peer_reaches_every_other(cluster):
    services = [await cluster.node() for _ in range(3)]
    names = ["alice", "bob", "carol"]
    clients = {n: cluster.client(s, n) for n, s in zip(names, services, strict=True)}
    for name, client in clients.items():
        client.set_offer_handler(answering(name=name))
    await defer.gatherResults([c.when_registered() for c in clients.values()])
    for sender in names:
        for recipient in names:
            if sender != recipient:
                answer = await clients[sender].connect(offer_from(sender, recipient))
                assert answer.from_name == recipient
    assert sum(s.factory.stats.offers_routed for s in services) == 6
    with pytest.raises(UnknownPeer):
        await clients["alice"].connect(offer_from("alice", "mallory"))


@pytest_twisted.ensureDeferred
async def test_a_name_registered_on_two_nodes_at_once_is_bound_once(cluster):
    # Every registration here comes from 127.0.0.1: lift the per-source rate.
    many = ServerLimits(register_rate=1000, register_burst=1000)
    one, two = await cluster.node(limits=many), await cluster.node(limits=many)
    for round in range(100):
        name = f"race{round}"
        contenders = [
            cluster.client(node, name, identity=Identity.generate(), retry_policy=SLOW_RETRY)
            for node in (one, two)
        ]
        outcomes = await defer.DeferredList(
            [c.when_registered() for c in contenders], consumeErrors=True
        )
        won = [ok for ok, _ in outcomes]
        assert sorted(won) == [False, True], (round, outcomes)
        [lost] = [result for ok, result in outcomes if not ok]
        assert lost.check(DuplicateName), lost
        winner = contenders[won.index(True)].identity.public
        for node in (one, two):
            assert await node_of(node).registry.lookup(name) == winner
        await defer.gatherResults([c.close() for c in contenders])
    assert one.factory.stats.registrations + two.factory.stats.registrations == 100


@pytest_twisted.ensureDeferred
async def test_a_redis_restart_loses_no_binding_and_nodes_route_again(cluster):
    one, two = await cluster.node(), await cluster.node()
    alice, bob = cluster.client(one, "alice"), cluster.client(two, "bob")
    bob.set_offer_handler(answering())
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    cluster.redis.restart()
    await until(lambda: not node_of(one).up and not node_of(two).up)  # they noticed
    await until(lambda: node_of(one).up and node_of(two).up, timeout=10)
    assert (await alice.connect(offer_from())).from_name == "bob"
    mallory = cluster.client(one, "bob", identity=KEYS["mallory"], retry_policy=SLOW_RETRY)
    with pytest.raises(DuplicateName):
        await mallory.when_registered()


@pytest_twisted.ensureDeferred
async def test_the_newest_connection_of_a_key_wins_across_nodes(cluster):
    one, two = await cluster.node(), await cluster.node()
    bob = cluster.client(one, "bob")
    old = cluster.client(one, "alice")
    await defer.gatherResults([bob.when_registered(), old.when_registered()])
    old.set_offer_handler(answering(name="alice", candidates=()))
    new = cluster.client(two, "alice")
    new.set_offer_handler(answering(name="alice"))
    await new.when_registered()
    await until(lambda: not old.registered)
    assert one.factory.stats.moved == 1
    assert one.factory.names() == ["bob"] and two.factory.names() == ["alice"]
    answer = await bob.connect(offer_from("bob", "alice"))
    assert answer.candidates == BOB_CANDIDATES  # the new connection's handler
    # The old one was told, and does not take the name back (it would retry in 0.05 s).
    with pytest.raises(RegisteredElsewhere, match="another node"):
        await old.when_registered()
    await deferLater(reactor, 0.3, lambda: None)
    assert not old.registered and two.factory.names() == ["alice"] and new.registered


@pytest_twisted.ensureDeferred
async def test_without_redis_a_node_serves_its_own_peers_and_reconciles(cluster):
    one, two = await cluster.node(), await cluster.node()
    alice, bob = cluster.client(one, "alice"), cluster.client(one, "bob")
    carol = cluster.client(two, "carol")
    for client, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        client.set_offer_handler(answering(name=name))
    await defer.gatherResults([c.when_registered() for c in (alice, bob, carol)])
    assert await alice.lookup("carol") == KEYS["carol"].public

    said: list[tuple[LogLevel, str]] = []

    @provider(ILogObserver)
    def hear(event: dict[str, Any]) -> None:
        if event.get("log_namespace", "").startswith("twisted_nat.cluster"):
            said.append((event["log_level"], formatEvent(event)))

    globalLogPublisher.addObserver(hear)
    cluster.clean_ups.append(lambda: globalLogPublisher.removeObserver(hear))
    cluster.redis.stop()
    await until(lambda: not node_of(one).up and not node_of(two).up)
    status = one.status()
    json.dumps(status)  # what --status serves
    assert status["cluster"]["redis_connected"] is False and status["peers"] == 2
    # The log says so, once per node, as a warning the operator sees.
    lost = [text for level, text in said if level is LogLevel.warn and "Lost Redis" in text]
    assert len(lost) == 2 and "serving the peers connected here only" in lost[0], said
    assert (await alice.connect(offer_from("alice", "bob"))).from_name == "bob"
    assert await alice.lookup("bob") == KEYS["bob"].public
    with pytest.raises(PeerUnavailable, match="unreachable"):
        await alice.connect(offer_from("alice", "carol"))
    with pytest.raises(RendezvousBusy, match="cannot answer now"):
        await alice.lookup("mallory")  # a name this node has not seen

    cluster.redis.start()
    await until(lambda: node_of(one).up and node_of(two).up, timeout=10)
    back = [text for level, text in said if level is LogLevel.info and "is back" in text]
    assert len(back) == 2, said
    # Even a Redis that lost the presence entries (they expired meanwhile) gets them back.
    cluster.redis.command("DEL", *(presence_of(n) for n in ("alice", "bob", "carol")))
    node_of(one).presence.refresh()
    node_of(two).presence.refresh()
    await until(lambda: cluster.redis.command("EXISTS", presence_of("carol")) == b":1\r\n")
    assert (await alice.connect(offer_from("alice", "carol"))).from_name == "carol"


def presence_of(name: str) -> str:
    return "twisted-nat:at:" + KEYS[name].public.text


@pytest_twisted.ensureDeferred
async def test_what_is_published_to_a_node_is_checked(cluster):
    one, two = await cluster.node(), await cluster.node()
    alice, bob = cluster.client(one, "alice"), cluster.client(two, "bob")
    received: list[Any] = []
    bob.set_offer_handler(answering(received=received))
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    channel = channel_of(node_of(two).node)
    # An offer for carol's key, sent to bob's: not delivered.
    misaddressed = offer_from(to=None, to_key=KEYS["carol"].public)
    request = messages.OfferRequest("e" * 16, node_of(one).node, KEYS["bob"].public, misaddressed)
    cluster.redis.command("PUBLISH", channel, messages.encode(request))
    stranger = Identity.generate().public
    for junk in (
        "not json",
        "[1]",
        '{"t":"offer"}',
        messages.encode(messages.OfferReply("0" * 16, None, "busy", "x")),  # a reply to nothing
        messages.encode(messages.Moved(stranger, "1" * 16)),  # a key not held there
        "x" * (messages.MAX_MESSAGE + 1),
    ):
        cluster.redis.command("PUBLISH", channel, junk)
    await until(lambda: sum(node_of(two).drops.counts.values()) >= 5)
    assert node_of(two).drops.counts["malformed"] == 4
    # Node two answered "unknown"; node one drops a reply to no offer of its own.
    await until(lambda: node_of(one).drops.counts["unexpected"] == 1)
    assert received == [] and two.factory.stats.offers_from_nodes == 0
    # Too large for the link: the connection goes, comes back, and serves on.
    cluster.redis.command("PUBLISH", channel, "x" * (200 * 1024))
    await until(lambda: node_of(two).link.oversized == 1)
    await until(lambda: node_of(two).up)
    assert (await alice.connect(offer_from())).from_name == "bob"


@pytest_twisted.ensureDeferred
async def test_an_offer_to_a_node_that_died_fails_at_once(cluster):
    one, two = await cluster.node(), await cluster.node()
    alice, bob = cluster.client(one, "alice"), cluster.client(two, "bob")
    bob.set_offer_handler(answering())
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    # The node's presence entries outlive it, but nobody hears its channel.
    await node_of(two).link.stopService()
    with pytest.raises(PeerUnavailable, match="gone"):
        await alice.connect(offer_from())


@pytest_twisted.ensureDeferred
async def test_peers_of_a_node_that_goes_away_move_to_another(cluster):
    one, two = await cluster.node(), await cluster.node()
    bob = RendezvousClient(
        reactor,
        [client_endpoint(one), client_endpoint(two)],
        "bob",
        KEYS["bob"],
        retry_policy=FAST_RETRY,
    )
    bob.startService()
    cluster.clients.append(bob)
    bob.set_offer_handler(answering())
    alice = cluster.client(two, "alice")
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    assert bob.endpoint == client_endpoint(one)
    assert (await alice.connect(offer_from())).from_name == "bob"

    # Node one goes away with bob connected: bob registers at node two, and
    # alice reaches him there, well within 5 s (the first retry waits 0.05 s).
    await one.stopService()
    await until(lambda: bob.registered and bob.endpoint == client_endpoint(two), timeout=5)
    assert sorted(two.factory.names()) == ["alice", "bob"]
    assert (await alice.connect(offer_from())).from_name == "bob"


@pytest_twisted.ensureDeferred
async def test_connections_between_peers_outlive_the_node_they_met_through(cluster):
    one, two = await cluster.node(), await cluster.node()
    received: dict[str, list[bytes]] = {"alice": [], "bob": []}

    def peer(name: str, endpoints: list[str]) -> NATTraversalService:
        def app(connection: Any) -> Collector:
            collector = Collector()
            collector.datagramReceived = lambda data, addr: received[name].append(data)  # type: ignore[method-assign]
            return collector

        service = NATTraversalService(
            [],
            reactor=reactor,
            name=name,
            rendezvous=endpoints,
            protocol_factory=app,
            settings=PeerSettings(
                interface="127.0.0.1", host_addresses=["127.0.0.1"], detect_behavior=False
            ),
            identity=KEYS[name],
        )
        service.startService()
        return service

    alice = peer("alice", [client_endpoint(one), client_endpoint(two)])
    bob = peer("bob", [client_endpoint(two)])
    try:
        await defer.gatherResults([s.signaling.when_registered() for s in (alice, bob)])
        connection = await alice.connect("bob")
        connection.write(b"before")
        await until(lambda: received["bob"] == [b"before"])

        await one.stopService()  # alice's node goes away
        signaling: Any = alice.signaling
        await until(lambda: signaling.registered and signaling.endpoint == client_endpoint(two))
        # The connection never depended on the node: same connection, both ways.
        assert alice.connections["bob"] is connection
        connection.write(b"after")
        await until(lambda: received["bob"] == [b"before", b"after"])
        bob.connections["alice"].write(b"back")
        await until(lambda: received["alice"] == [b"back"])
        # And alice is reachable again, through node two.
        assert await bob.signaling.lookup("alice") == KEYS["alice"].public
    finally:
        await alice.stopService()
        await bob.stopService()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_moved_while_redis_was_away_is_found_where_it_is(cluster):
    one, two = await cluster.node(), await cluster.node()
    alice, bob = cluster.client(one, "alice"), cluster.client(two, "bob")
    carol = cluster.client(two, "carol")
    await defer.gatherResults([c.when_registered() for c in (alice, bob, carol)])
    assert await alice.lookup("carol") == KEYS["carol"].public  # node one knows the name

    cluster.redis.stop()
    await until(lambda: not node_of(one).up and not node_of(two).up)
    await carol.close()
    moved = cluster.client(one, "carol")  # registers from node one's cache
    moved.set_offer_handler(answering(name="carol"))
    await moved.when_registered()

    cluster.redis.start()
    await until(lambda: node_of(one).up and node_of(two).up, timeout=10)
    # Node one writes carol's registration as new; node two's stale entry is replaced.
    entry = f"${len(node_of(one).node)}\r\n{node_of(one).node}\r\n".encode()
    await until(lambda: cluster.redis.command("GET", presence_of("carol")) == entry)
    assert (await bob.connect(offer_from("bob", "carol"))).from_name == "carol"
    assert moved.registered
