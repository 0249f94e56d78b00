"""
NAT detection on real Linux NATs: ours against pystun3, per NAT type.

    python -m benchmarks.bench_detect [--runs 10] [--json PATH]

Needs root (it builds the NAT lab of C{tests.support.natlab}: network
namespaces and nftables).  Both tools run inside the same peer namespace
against our RFC 5780 server in the lab's internet namespace, one after the
other; only the detection call is timed, not interpreter start-up.
pystun3 is bound to the peer's own address (bound to 0.0.0.0 it calls an
un-NATed host "full cone").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.lab_servers import OURS, detect_from, start_servers
from tests.support.natlab import NatSpec, NatType, nat_lab, require_lab

KINDS = {
    NatType.NONE: ("none", "open internet"),
    NatType.FULL_CONE: ("full", "full cone"),
    NatType.RESTRICTED_CONE: ("restricted", "restricted cone"),
    NatType.PORT_RESTRICTED_CONE: ("portrestr", "port-restricted cone"),
    NatType.SYMMETRIC: ("symmetric", "symmetric"),
}


def summarise(runs: list[Any], expected: str) -> dict[str, Any]:
    seconds = [r["seconds"] for r in runs]
    verdicts = Counter(r["nat_type"] for r in runs)
    return {
        "runs": len(runs),
        "median_s": statistics.median(seconds),
        "max_s": max(seconds),
        "correct": verdicts.get(expected, 0),
        "verdicts": dict(verdicts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    require_lab()
    rows: list[dict[str, Any]] = []
    specs = [NatSpec(name=name, type=kind) for kind, (name, _) in KINDS.items()]
    with nat_lab(specs) as lab, tempfile.TemporaryDirectory() as workdir:
        start_servers(lab, None, workdir)
        for name, expected in KINDS.values():
            nat = lab.nat(name)
            ours = summarise(detect_from(lab, nat, OURS, args.runs), expected)
            theirs = summarise(detect_from(lab, nat, OURS, args.runs, "pystun3"), expected)
            rows.append({"nat": expected, "ours": ours, "pystun3": theirs})
            print(
                f"{expected:<22} ours {ours['median_s'] * 1000:7.0f} ms median "
                f"{ours['max_s'] * 1000:7.0f} ms max {ours['correct']:>3}/{ours['runs']} right | "
                f"pystun3 {theirs['median_s'] * 1000:7.0f} ms median "
                f"{theirs['max_s'] * 1000:7.0f} ms max {theirs['correct']:>3}/{theirs['runs']} "
                f"right {theirs['verdicts']}",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
