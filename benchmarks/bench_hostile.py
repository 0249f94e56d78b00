"""
What a stranger's offer costs a peer: datagrams and bytes sent towards the
addresses the offer named (none of which answers), and extra sockets
opened, for one offer and for ten, per NAT the peer is behind.  The offer
claims whatever NAT type makes the peer work hardest, and names 32
addresses.  Run on the simulated internet (15 s of simulated time after
the offers), so the counts are exact and repeatable.

    python -m benchmarks.bench_hostile [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from tests.support.hostile import VICTIMS, cost_of_offers


def run() -> dict[str, Any]:
    results: dict[str, Any] = {}
    for victim in VICTIMS:
        for offers in (1, 10, 100):
            cost = cost_of_offers(victim, offers)
            results[f"{victim}, {offers} offers"] = {
                "datagrams": cost.datagrams,
                "bytes": cost.payload_bytes,
                "extra_sockets": cost.sockets,
                "offers_refused": cost.offers_refused,
            }
    return {"benchmark": "hostile offers", "results": results}


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'victim, offers':<42} {'datagrams':>9} {'bytes':>9} {'sockets':>7} {'refused':>7}"]
    lines.append("-" * len(lines[0]))
    for name, row in report["results"].items():
        lines.append(
            f"{name:<42} {row['datagrams']:>9,} {row['bytes']:>9,}"
            f" {row['extra_sockets']:>7} {row['offers_refused']:>7}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", metavar="PATH", help="also write the JSON report to PATH")
    args = parser.parse_args(argv)
    report = run()
    print(format_table(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
