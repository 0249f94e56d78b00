"""
Memory per registered peer at 20,000 registered peers: one rendezvous
server on its own (names in memory, no C{--redis}), one node on Redis, and
two nodes on Redis with half the peers each.

Run with C{python -m benchmarks.bench_cluster_memory [--peers N] [--json PATH]}
(needs Debian's C{redis-server}; root, to raise the descriptor limit of the
nodes past 20,000 connections).  Everything is on loopback: each node is a
C{twistd -n nat server} process of its own, the peers are
L{RendezvousClient}s in four client processes (each a fresh key and name),
and redis-server is a child with an append-only file fsynced every second.
A node's memory is its resident set (C{VmRSS}), read after a warm-up of
L{WARM_UP} peers and again once every peer is registered; Redis's is its
C{used_memory}.  The figure is the growth divided by the peers added.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import select
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

from tests.support.cluster_nodes import Node, Place, on_loopback, start_node
from tests.support.coturn import _die_with_parent_hook, find_tool
from tests.support.natlab import child_environment
from tests.support.redis import RedisServer, running_redis

PEERS = 19_800
"""
About 20,000: what one process can hold under a descriptor limit of 20,000
(the node keeps 64 for itself) where the limit cannot be raised.
"""

CLIENT_PROCESSES = 4
WARM_UP = 200
BATCH = 10
"""
Clients started at once in a client process: more than Twisted's listen
queue of 50 in all would have connections wait out SYN retransmissions.
"""

DESCRIPTORS = 65_536
LIMITS = ["--max-connections", "60000", "--max-per-ip", "60000", "--register-rate", "1000000"]


def _raise_descriptors() -> None:
    """In a child before exec: room for every connection (root may raise the hard limit)."""
    with suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (DESCRIPTORS, DESCRIPTORS))


def _preexec() -> Callable[[], None]:
    die = _die_with_parent_hook()

    def hook() -> None:
        _raise_descriptors()
        if die is not None:
            die()

    return hook


def _place() -> Place:
    loopback = on_loopback()

    def spawn(argv: Sequence[str]) -> subprocess.Popen[Any]:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
            env=child_environment(),
            preexec_fn=_preexec(),
        )

    return Place(loopback.host, spawn, loopback.run, loopback.tcp_port, loopback.udp_port)


def _rss(pid: int) -> int:
    """Resident bytes of process C{pid}."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _redis_memory(redis: RedisServer) -> int:
    info = redis.command("INFO", "memory").decode()
    for line in info.splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    raise RuntimeError("no used_memory in INFO")


class Clients:
    """A client process holding C{count} registered peers until it is killed."""

    def __init__(self, endpoints: Sequence[str], count: int, prefix: str) -> None:
        argv = [sys.executable, "-m", "benchmarks.bench_cluster_memory", "--client", prefix]
        argv += [str(count), *endpoints]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            env=child_environment(),
            preexec_fn=_preexec(),
        )

    def registered(self, timeout: float = 900.0) -> int:
        """Wait until every peer of it is registered; how many that is."""
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"a client process did not register its peers in {timeout:g} s")
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"a client process exited: {self.process.wait()}")
        return int(json.loads(line)["registered"])

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()


def _measure(
    label: str, redis: RedisServer | None, nodes: int, peers: int, tag: str
) -> dict[str, Any]:
    place = _place()
    started: list[Node] = []
    clients: list[Clients] = []
    try:
        for _ in range(nodes):
            address = redis.endpoint if redis is not None else None
            started.append(start_node(place, address, LIMITS))
        endpoints = [node.endpoint for node in started]
        # The warm-up: WARM_UP peers, spread over the nodes like the rest.
        warm = Clients(endpoints, WARM_UP, f"w{tag}")
        clients.append(warm)
        warm.registered()
        time.sleep(2.0)
        before = [_rss(node.process.pid) for node in started]
        redis_before = _redis_memory(redis) if redis is not None else 0
        each = (peers - WARM_UP) // CLIENT_PROCESSES
        batch = [Clients(endpoints, each, f"p{tag}{i}") for i in range(CLIENT_PROCESSES)]
        clients += batch
        added = sum(c.registered() for c in batch)
        time.sleep(2.0)
        after = [_rss(node.process.pid) for node in started]
        statuses = [node.status() for node in started]
        held = sum(int(s["peers"]) for s in statuses)
        if held != added + WARM_UP:
            raise RuntimeError(f"{label}: the nodes hold {held} peers, not {added + WARM_UP}")
        row: dict[str, Any] = {
            "peers": held,
            "node_bytes_per_peer": (sum(after) - sum(before)) / added,
            "node_rss_mib": [round(rss / 2**20, 1) for rss in after],
        }
        if redis is not None:
            row["redis_bytes_per_peer"] = (_redis_memory(redis) - redis_before) / added
        return row
    finally:
        for client in clients:
            client.kill()
        for node in started:
            node.stop()


def run(args: argparse.Namespace) -> dict[str, Any]:
    executable = find_tool("redis-server")
    if executable is None:
        raise SystemExit("redis-server is not installed (Debian package redis-server)")
    results: dict[str, Any] = {}
    with running_redis(appendfsync="everysec") as redis:
        for n, (label, use_redis, nodes) in enumerate(
            (("alone", False, 1), ("one node", True, 1), ("two nodes", True, 2))
        ):
            redis.command("FLUSHALL")
            row = _measure(label, redis if use_redis else None, nodes, args.peers, str(n))
            results[label] = row
            print(f"{label:>10}: {json.dumps(row)}", flush=True)
    return results


def client(prefix: str, count: int, endpoints: Sequence[str]) -> None:
    """The client process: C{count} peers registered, a line said, then held until killed."""
    from twisted.application.internet import backoffPolicy
    from twisted.internet import defer
    from twisted.internet import reactor as global_reactor

    from twisted_nat.rendezvous import RendezvousClient
    from twisted_nat.trust import Identity

    reactor: Any = global_reactor
    retry = backoffPolicy(initialDelay=0.2, maxDelay=2.0)
    held: list[RendezvousClient] = []

    async def register() -> None:
        for first in range(0, count, BATCH):
            batch = [
                RendezvousClient(
                    reactor,
                    endpoints[i % len(endpoints)],
                    f"{prefix}-{i}",
                    Identity.generate(),
                    retry_policy=retry,
                )
                for i in range(first, min(count, first + BATCH))
            ]
            for peer in batch:
                peer.startService()
            await defer.gatherResults([peer.when_registered() for peer in batch])
            held.extend(batch)
        sys.stdout.write(json.dumps({"registered": len(held)}) + "\n")
        sys.stdout.flush()

    def failed(failure: Any) -> None:
        sys.stderr.write(f"registering failed: {failure.value}\n")
        os._exit(1)

    reactor.callWhenRunning(lambda: defer.Deferred.fromCoroutine(register()).addErrback(failed))
    reactor.run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--peers", type=int, default=PEERS)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--client", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        prefix, count, *endpoints = args.client
        client(prefix, int(count), endpoints)
        return 0
    results = run(args)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
