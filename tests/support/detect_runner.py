"""
Run NAT detection several times in one process and print one JSON line per
run: ours (L{twisted_nat.nat.detect_nat}) or pystun3's, for the lab
tests and the detection benchmark, which run it inside a peer's namespace.

    python -m tests.support.detect_runner --stun HOST:PORT --runs N [--tool pystun3]

Only the detection call is timed, not the interpreter's start-up.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.internet.task import react

from twisted_nat.address import parse_hostport
from twisted_nat.nat import route_source

# pystun3's names (spelt as pystun3 2.0 spells them), as the classic names of
# twisted_nat.nat.NATType.
PYSTUN3_NAMES = {
    "Open Internet": "open internet",
    "Full Cone": "full cone",
    "Restric NAT": "restricted cone",
    "Restric Port NAT": "port-restricted cone",
    "Symmetric NAT": "symmetric",
    "Symmetric UDP Firewall": "no NAT, firewalled",
    "Blocked": "UDP blocked",
}


def run_ours(server: tuple[str, int], runs: int) -> None:
    from twisted_nat.nat import detect_nat

    async def main(reactor: Any) -> None:
        for _ in range(runs):
            started = time.perf_counter()
            behavior = await detect_nat(reactor, [server])
            seconds = time.perf_counter() - started
            print(json.dumps({"seconds": seconds, **behavior.as_json()}), flush=True)

    react(lambda reactor: ensureDeferred(main(reactor)))


def run_pystun3(server: tuple[str, int], runs: int) -> None:
    import stun

    source = route_source(server[0]) or "0.0.0.0"
    for _ in range(runs):
        started = time.perf_counter()
        nat, ip, port = stun.get_ip_info(
            source_ip=source,
            source_port=random.randint(20000, 60000),
            stun_host=server[0],
            stun_port=server[1],
        )
        seconds = time.perf_counter() - started
        record = {
            "seconds": seconds,
            "raw": nat,
            "nat_type": PYSTUN3_NAMES.get(nat, nat),
            "public": f"{ip}:{port}",
        }
        print(json.dumps(record), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--stun", required=True, help="HOST:PORT of an RFC 5780 server")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--tool", choices=["ours", "pystun3"], default="ours")
    args = parser.parse_args(argv)
    server = parse_hostport(args.stun, 3478)
    if args.tool == "ours":
        run_ours(server, args.runs)
    else:
        run_pystun3(server, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
