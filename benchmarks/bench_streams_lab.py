"""
QUIC stream throughput between two real NATs: twisted-nat's streams on the
punched path, and relayed through the lab's coturn.

    python -m benchmarks.bench_streams_lab [--mib 64] [--runs 3] [--json PATH]

Needs root (it builds the NAT lab of C{tests.support.natlab}).  Each peer
is behind a port-restricted cone of its own; our STUN and rendezvous
servers and coturn are in the lab's internet namespace.  The transfer and
what is measured are L{benchmarks.bench_streams}'s (the same processes,
L{benchmarks.streams_ours}); a stock aioquic pair has no part here, since
it cannot cross the NATs.  Direct and relayed runs alternate.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

from benchmarks.bench_streams import Spawner, pair, summary_table
from tests.support.lab_fixtures import LabWorld, lab_world
from tests.support.lab_servers import TURN_CREDENTIALS
from tests.support.natlab import NatSpec, NatType

NATS = [
    NatSpec("left", NatType.PORT_RESTRICTED_CONE),
    NatSpec("right", NatType.PORT_RESTRICTED_CONE),
]
KINDS = ("direct", "relayed")


def _behind(world: LabWorld, nat: str) -> Spawner:
    namespace = world.lab.nat(nat).peers[0].namespace

    def spawn(arguments: list[str]) -> subprocess.Popen[str]:
        return world.lab.spawn(namespace, [sys.executable, *arguments], stderr=subprocess.DEVNULL)

    return spawn


def transfer(world: LabWorld, mib: int, label: str, relayed: bool) -> dict[str, Any]:
    """One stream of C{mib} MiB from the right NAT's peer to the left's."""
    assert world.turn is not None
    common = [
        *("--rendezvous", world.rendezvous, "--stun", world.stun, "--interface", "0.0.0.0"),
        *("--turn", world.turn, "--turn-user", TURN_CREDENTIALS.username),
        *("--turn-password", TURN_CREDENTIALS.password),
        *(["--relay-only"] if relayed else []),
    ]
    receiver, sender = f"bob-{label}", f"alice-{label}"
    result = pair(
        ["-m", "benchmarks.streams_ours", "receive", "--name", receiver, *common],
        [
            *("-m", "benchmarks.streams_ours", "send", "--name", sender, "--to", receiver),
            *("--mib", str(mib), *common),
        ],
        _behind(world, "left"),
        _behind(world, "right"),
    )
    if result["relayed"] != relayed:
        raise RuntimeError(f"the stream went {'relayed' if result['relayed'] else 'direct'}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    options = parser.parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    with lab_world(NATS, turn=True) as world:
        for run in range(options.runs):
            for kind in KINDS:
                result = transfer(world, options.mib, f"{kind}-{run}", kind == "relayed")
                results[kind].append(result)
            said = ", ".join(f"{k} {r[-1]['mib_per_second']:.1f} MiB/s" for k, r in results.items())
            print(f"run {run + 1}: {said}", flush=True)
    print(f"\n{options.mib} MiB over one stream between two port-restricted cones:\n")
    summaries = summary_table(results, options.runs)
    if options.json is not None:
        options.json.write_text(
            json.dumps(
                {
                    "date": date.today().isoformat(),
                    "machine": platform.machine(),
                    "python": platform.python_version(),
                    "mib": options.mib,
                    "runs": results,
                    "summary": summaries,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
