"""
Recovery from a NAT reboot on real Linux NATs: liveness checks against
keep-alive alone, in the same run.

    python -m benchmarks.bench_failure [--trials 20] [--json PATH]

Needs root (it builds the NAT lab of C{tests.support.natlab}).  A trial is
C{tests.support.reboots}'s: the offerer streams a datagram every 100 ms to
the answerer, which sends nothing back but keep-alives; both NATs' conntrack
is flushed, and the time is from the flush to the arrival of the first
datagram sent after it.  Two pairs of NATs:

  - two port-restricted cones, which keep their ports: the pair can heal
    once the receiver sends (its next keep-alive, or a check);
  - a symmetric NAT (random ports) offering to a full cone: the old path is
    gone for good, and only a new punch through the rendezvous mends it.

Each pair runs with the defaults (checks on) and with
C{--no-liveness-checks} (keep-alive alone: 25 s interval, 5 s timeout,
lost after five unanswered probes), the four at once on four pairs of
NATs, each for C{--trials} reboots of one connection, 1 to 26 s apart at
random (so that a flush falls anywhere in the keep-alive's period).  A trial with no
datagram within C{--give-up} seconds counts as that many seconds and is
reported.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tests.support.lab_fixtures import Peers, lab_world
from tests.support.natlab import NatSpec, NatType, require_lab
from tests.support.reboots import Recovery, flowing_pair, reboot

PAIRS = {
    "port-restricted cones": (NatType.PORT_RESTRICTED_CONE, NatType.PORT_RESTRICTED_CONE),
    "symmetric to full cone": (NatType.SYMMETRIC, NatType.FULL_CONE),
}
MODES = {"keep-alive alone": ("--no-liveness-checks",), "liveness checks": ()}


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile: a value that was measured, not an interpolation."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def run(
    peers: Peers, offerer: str, answerer: str, options: tuple[str, ...], args: argparse.Namespace
) -> list[Recovery]:
    """
    C{--trials} reboots of a connection from C{offerer}'s NAT to
    C{answerer}'s.  A connection whose data does not flow before a reboot
    (a trial that gave up left it broken) is replaced by a new one, and
    both peers' last events are printed.
    """
    nats = [peers.world.lab.nat(offerer), peers.world.lab.nat(answerer)]
    # A peer process would end itself after the lab fixtures' few minutes.
    lasting = ("--exit-after", str(args.trials * (args.give_up + 10) + 60))
    pair = flowing_pair(peers, (offerer, 0), (answerer, 0), *options, *lasting)
    recoveries: list[Recovery] = []
    rng = random.Random(f"{offerer} {answerer}")
    while len(recoveries) < args.trials:
        try:
            recoveries.append(reboot(*pair, nats, args.give_up))
        except AssertionError as e:
            print(f"{offerer} -> {answerer}: no data before a reboot; a new pair\n{e}", flush=True)
            for peer in pair:
                events = [e for e in peer.snapshot() if e["event"] not in ("sent", "data")]
                print("\n".join(json.dumps(event) for event in events[-40:]))
                peer.stop()
            pair = flowing_pair(peers, (offerer, 0), (answerer, 0), *options, *lasting)
        # At a random moment of the keep-alive's 25 s period: trials a fixed
        # time apart would flush at the same moment of it every time.
        time.sleep(rng.uniform(1.0, 26.0))
    return recoveries


def summarise(recoveries: list[Recovery], give_up: float) -> dict[str, Any]:
    seconds = [r.seconds if r.seconds is not None else give_up for r in recoveries]
    return {
        "trials": len(recoveries),
        "median_s": statistics.median(seconds),
        "p95_s": percentile(seconds, 0.95),
        "max_s": max(seconds),
        "gave_up": sum(r.seconds is None for r in recoveries),
        "punched_again": sum(r.repunched for r in recoveries),
        "states": sorted({" > ".join(r.states) or "(none)" for r in recoveries}),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--give-up", type=float, default=90.0, metavar="S")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    require_lab()
    runs = []
    specs = []
    for p, (pair, (a, b)) in enumerate(PAIRS.items()):
        for m, mode in enumerate(MODES):
            offerer, answerer = f"o{p}{m}", f"a{p}{m}"
            specs += [NatSpec(offerer, a), NatSpec(answerer, b)]
            runs.append((pair, mode, offerer, answerer))
    rows: list[dict[str, Any]] = []
    with lab_world(specs) as world:
        peers = Peers(world)
        try:
            with ThreadPoolExecutor(len(runs)) as pool:
                futures = {
                    pool.submit(run, peers, offerer, answerer, MODES[mode], args): (pair, mode)
                    for pair, mode, offerer, answerer in runs
                }
                for future in as_completed(futures):
                    pair, mode = futures[future]
                    row = {"pair": pair, "mode": mode, **summarise(future.result(), args.give_up)}
                    rows.append(row)
                    print(
                        f"{pair:<24} {mode:<18} median {row['median_s']:6.2f} s "
                        f"p95 {row['p95_s']:6.2f} s max {row['max_s']:6.2f} s "
                        f"({row['trials']} trials, {row['gave_up']} gave up, "
                        f"{row['punched_again']} punched again; states {row['states']})",
                        flush=True,
                    )
        finally:
            peers.stop_all()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
