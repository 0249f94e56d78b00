"""
Rendezvous nodes on Redis against one server on its own: registrations and
offer round trips a second, offer latency, and CPU per offer.

Run with C{python -m benchmarks.bench_redis [--offers N] [--json PATH]}
(needs Debian's C{redis-server}).  Everything is in this process on one
reactor, over loopback TCP: the servers, the clients, and (a child
process) a redis-server with an append-only file fsynced every second.
Three set-ups, in one run:

 - C{alone}: one server, names in memory (what C{twistd nat server} does
   without C{--redis});
 - C{one node}: one server on Redis, both peers on it;
 - C{two nodes}: two servers on Redis, the offerer on one and the
   answerer on the other, so every offer and answer crosses Redis.

Registrations: 4 clients each register C{--registrations} names in turn
(challenge, signature, claim).  Offers: one peer offers to another,
C{--in-flight} at once; offers and answers are signed before the clock
starts, so the figures are the rendezvous path alone.  CPU is this
process's (servers and clients together) and redis-server's, per offer.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from twisted.application.internet import backoffPolicy
from twisted.internet import defer
from twisted.internet.address import IPv4Address

from tests.support.coturn import find_tool
from tests.support.polling import until
from tests.support.redis import RedisServer, running_redis
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.cluster.address import RedisAddress
from twisted_nat.cluster.node import ClusterNode
from twisted_nat.rendezvous import RendezvousClient, RendezvousService, make_rendezvous_service
from twisted_nat.rendezvous.quotas import ServerLimits
from twisted_nat.rendezvous.values import Answer, Offer
from twisted_nat.trust import Identity
from twisted_nat.trust.handshake import Offering, answer_offer

LIMITS = ServerLimits(register_rate=1e6, register_burst=1_000_000, max_per_source=1000)
RETRY = backoffPolicy(initialDelay=0.05, maxDelay=0.2, jitter=lambda: 0.0)
CANDIDATES = (Candidate(CandidateType.HOST, "192.0.2.1", 40000),)


def _ticks(pid: int) -> float:
    """CPU seconds (user and system) process C{pid} has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _endpoint(service: RendezvousService) -> str:
    assert service.port is not None
    host = service.port.getHost()
    assert isinstance(host, IPv4Address)
    return f"tcp:host=127.0.0.1:port={host.port}"


async def _servers(reactor: Any, redis: RedisServer | None, count: int) -> list[RendezvousService]:
    services = []
    for _ in range(count):
        cluster = None
        if redis is not None:
            cluster = ClusterNode(reactor, RedisAddress(redis.endpoint, 0, "bench"))
        service = make_rendezvous_service(
            reactor, "tcp:0:interface=127.0.0.1", limits=LIMITS, cluster=cluster
        )
        service.startService()
        await service.when_listening()
        if cluster is not None:
            await _up(cluster)
        services.append(service)
    return services


async def _up(cluster: ClusterNode) -> None:
    await until(lambda: cluster.up, timeout=10)


async def _registrations(reactor: Any, services: list[RendezvousService], each: int) -> float:
    tag = str(time.monotonic_ns())[-8:]
    clients = [
        RendezvousClient(
            reactor,
            _endpoint(services[i % len(services)]),
            f"r{i}-{tag}",
            Identity.generate(),
            retry_policy=RETRY,
        )
        for i in range(4)
    ]
    for client in clients:
        client.startService()
    await defer.gatherResults([c.when_registered() for c in clients])

    async def register(i: int, client: RendezvousClient) -> None:
        for n in range(each):
            await client.register(f"r{i}-{n}-{tag}")

    start = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(register(i, c)) for i, c in enumerate(clients)])
    elapsed = time.perf_counter() - start
    await defer.gatherResults([c.close() for c in clients])
    return 4 * each / elapsed


async def _offers(
    reactor: Any, services: list[RendezvousService], count: int, in_flight: int
) -> dict[str, float]:
    alice_id, bob_id = Identity.generate(), Identity.generate()
    tag = str(time.monotonic_ns())[-8:]
    alice_name, bob_name = f"alice{tag}", f"bob{tag}"
    offers: list[Offer] = [
        Offering(alice_id, alice_name, CANDIDATES, None, bob_name).offer for _ in range(count)
    ]
    answers: dict[bytes, Answer] = {
        o.session_id: answer_offer(bob_id, bob_name, o, CANDIDATES, None)[0] for o in offers
    }
    alice = RendezvousClient(
        reactor, _endpoint(services[0]), alice_name, alice_id, retry_policy=RETRY
    )
    bob = RendezvousClient(reactor, _endpoint(services[-1]), bob_name, bob_id, retry_policy=RETRY)
    bob.set_offer_handler(lambda offer: answers[offer.session_id])
    for client in (alice, bob):
        client.startService()
    await defer.gatherResults([alice.when_registered(), bob.when_registered()])
    await alice.connect(offers.pop())  # warm up: lookups, scripts loaded
    latencies: list[float] = []
    queue = list(offers)

    async def worker() -> None:
        while queue:
            offer = queue.pop()
            sent = time.perf_counter()
            await alice.connect(offer)
            latencies.append(time.perf_counter() - sent)

    cpu = os.times()
    start = time.perf_counter()
    await defer.gatherResults([defer.ensureDeferred(worker()) for _ in range(in_flight)])
    elapsed = time.perf_counter() - start
    used = os.times()
    await defer.gatherResults([alice.close(), bob.close()])
    ours = (used.user + used.system) - (cpu.user + cpu.system)
    latencies.sort()
    return {
        "offers_per_s": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "cpu_us_per_offer": ours / len(latencies) * 1e6,
    }


async def run(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    executable = find_tool("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not installed (Debian package redis-server)")
    results: dict[str, Any] = {}
    with running_redis(appendfsync="everysec") as redis:
        for label, use_redis, nodes in (
            ("alone", False, 1),
            ("one node", True, 1),
            ("two nodes", True, 2),
        ):
            services = await _servers(reactor, redis if use_redis else None, nodes)
            redis_cpu = _ticks(redis.process.pid) if redis.process else 0.0
            row = await _offers(reactor, services, args.offers, args.in_flight)
            if use_redis and redis.process is not None:
                row["redis_cpu_us_per_offer"] = (
                    (_ticks(redis.process.pid) - redis_cpu) / args.offers * 1e6
                )
            row["registrations_per_s"] = await _registrations(reactor, services, args.registrations)
            await defer.gatherResults([s.stopService() for s in services])
            results[label] = row
            print(f"{label:>10}: " + ", ".join(f"{k} {v:.1f}" for k, v in row.items()))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--offers", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--registrations", type=int, default=250, help="per client (4 clients)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    from twisted.internet import reactor as global_reactor

    reactor: Any = global_reactor
    results: dict[str, Any] = {}
    failures: list[BaseException] = []

    async def body() -> None:
        try:
            results.update(await run(reactor, args))
        except BaseException as e:
            failures.append(e)
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(body()))
    reactor.run()
    if failures:
        raise failures[0]
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
