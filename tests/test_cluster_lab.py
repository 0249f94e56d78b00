"""
Peers behind real NATs registered on different rendezvous nodes connect as
they do through one: two C{twistd nat server --redis} nodes and a
redis-server in the lab's internet, peers behind two NATs each registered
at its own node.

For each ordered pair of NATs, the pair first connects with both peers on
node one (as before), then with the offerer on node one and the answerer on
node two, whose offer and answer cross Redis; both must end on a direct
path, and carry data.  The nodes' status shows the offers went
from one node to the other.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from typing import Any

import attrs
import pytest

from tests.support.cluster_nodes import Node, in_lab, start_node, start_redis_in_lab
from tests.support.lab_fixtures import LabWorld, Peers
from tests.support.lab_servers import OURS, start_servers
from tests.support.natlab import NatSpec, NatType, nat_lab, require_lab

pytestmark = pytest.mark.lab

NATS = [
    NatSpec("portrestr", NatType.PORT_RESTRICTED_CONE),
    NatSpec("restricted", NatType.RESTRICTED_CONE),
    NatSpec("symmetric", NatType.SYMMETRIC),
]
PAIRS = [("portrestr", "restricted"), ("restricted", "symmetric"), ("symmetric", "restricted")]
"""Cones, and a symmetric NAT offering and answering: each pair connects directly on one node."""


@attrs.frozen
class Cluster:
    """The lab, its two nodes, and a world for peers of each node."""

    one: Node
    two: Node
    on_one: LabWorld
    on_two: LabWorld


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """The lab with a STUN server, Redis and two nodes; torn down whatever happens."""
    require_lab()
    with nat_lab(NATS) as lab, tempfile.TemporaryDirectory() as workdir:
        start_servers(lab, None, workdir)
        redis = start_redis_in_lab(lab, workdir)
        place = in_lab(lab)
        one = start_node(place, redis.endpoint)
        two = start_node(place, redis.endpoint)
        on_one = LabWorld(lab, one.endpoint, f"{lab.internet.addresses[0]}:{OURS}")
        yield Cluster(one, two, on_one, attrs.evolve(on_one, rendezvous=two.endpoint))


@pytest.fixture
def peers(cluster: Cluster) -> Iterator[tuple[Peers, Peers]]:
    """Peers registering at node one, and at node two; all stopped after the test."""
    started = Peers(cluster.on_one), Peers(cluster.on_two)
    try:
        yield started
    finally:
        for group in started:
            group.stop_all()


def connect(offering: Peers, answering: Peers, offerer: str, answerer: str, tag: str) -> Any:
    """The offerer behind C{offerer}'s NAT connects to a peer behind C{answerer}'s; its path."""
    # Names stay bound to their first key (each process makes one): one pair of names a case.
    name = f"{answerer}-{offerer}-{tag}"
    answer = answering.start(answerer, name)
    answer.wait_for("ready", timeout=60)
    offer = offering.start(offerer, f"{offerer}-{answerer}-{tag}-o", "--connect", name)
    [connected] = offer.wait_for("connected", timeout=60, peer=name)
    offer.command(f"send {name} 5")
    answer.wait_for("data", 5, timeout=30)
    answer.stop()
    offer.stop()
    return connected["path"]


@pytest.mark.parametrize(("offerer", "answerer"), PAIRS)
def test_peers_on_different_nodes_connect_as_through_one(
    cluster: Cluster, peers: tuple[Peers, Peers], offerer: str, answerer: str
) -> None:
    on_one, on_two = peers
    alone = connect(on_one, on_one, offerer, answerer, "alone")
    routed_before = cluster.one.status()["stats"]["offers_routed"]
    across = connect(on_one, on_two, offerer, answerer, "across")
    assert not alone["relayed"] and not across["relayed"], (alone, across)
    # The offer went from node one to node two through Redis, and was delivered there.
    assert cluster.one.status()["stats"]["offers_routed"] >= routed_before + 1
    assert cluster.two.status()["stats"]["offers_from_nodes"] >= 1
    for node in (cluster.one, cluster.two):
        assert node.status()["cluster"]["redis_connected"] is True
