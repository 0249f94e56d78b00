"""
Rendezvous nodes that share their peers through Redis: the names bound to
keys (L{twisted_nat.cluster.registry.RedisRegistry}), which node holds each
peer's connection (L{twisted_nat.cluster.presence}), and offers routed
between nodes by pub/sub (L{twisted_nat.cluster.node.ClusterNode}).

Those modules need the optional C{txredisapi} (C{pip install
'twisted-nat[redis]'}); this package and L{twisted_nat.cluster.address}
import without it, so that C{twistd nat} runs without Redis.

    from twisted_nat.cluster.node import ClusterNode
    node = ClusterNode(reactor, parse_redis_address("redis://10.0.0.5/0"))
    make_rendezvous_service(reactor, "tcp:8765", cluster=node).setServiceParent(app)
"""

from twisted_nat.cluster.address import RedisAddress, parse_redis_address

__all__ = ["RedisAddress", "parse_redis_address"]
