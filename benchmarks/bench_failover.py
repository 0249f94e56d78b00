"""
How long the peers of a rendezvous node killed outright take to be
reachable through another node.

Run with C{python -m benchmarks.bench_failover [--runs N] [--json PATH]}
(needs Debian's C{redis-server}).  Each run is the scenario of
C{tests/test_cluster_processes.py} on loopback
(L{tests.support.cluster_nodes.kill_a_node}): two C{twistd -n nat server
--redis} nodes, bob registered at the first and knowing the second, alice
and carol at the second, alice connected to bob; the first node gets
SIGKILL, and carol offers to bob (again every 50 ms while his node is
gone) until she is connected.  The figure is the time from the kill to
carol's connection, stamped by the processes with the machine's clock.
The peers reconnect with the rendezvous client's default backoff (a
first retry after 1 s plus up to 1 s of jitter), which is most of it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from tests.support.cluster_nodes import kill_a_node, nodes_on_loopback
from tests.support.redis import running_redis


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    seconds: list[float] = []
    with running_redis() as redis:
        for run in range(args.runs):
            redis.command("FLUSHALL")
            with nodes_on_loopback(redis.endpoint, 2) as (one, two):
                seconds.append(kill_a_node(one, two))
            print(f"run {run + 1}: reachable {seconds[-1]:.2f} s after the kill", flush=True)
    results = {
        "runs": len(seconds),
        "median_s": statistics.median(seconds),
        "min_s": min(seconds),
        "max_s": max(seconds),
        "seconds": seconds,
    }
    low, middle, high = results["min_s"], results["median_s"], results["max_s"]
    print(f"median {middle:.2f} s, min {low:.2f}, max {high:.2f}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
