"""
Connection set-up on real Linux NATs, pair by pair: ours against aioice.

    python -m benchmarks.bench_connect [--trials 20] [--loss 0] [--json PATH]
                                       [--markdown PATH] [--no-aioice]

Needs root (it builds the NAT lab of C{tests.support.natlab}).  For every
ordered pair of NATs (the offerer first), and for two peers behind each
NAT, it runs C{--trials} connections of ours and of aioice's, and writes a
markdown table to C{benchmarks/connect-matrix.md} (or C{--markdown}) and,
with C{--json}, every figure to a file.

What is timed:

  - ours: from C{NATTraversalService.connect()} to the L{PeerConnection},
    on the offering side, as L{tests.support.peer_runner} reports it.  That
    includes the offer and answer through our rendezvous server in the
    internet namespace, as it does for an application.  Each trial uses a
    fresh socket, so it opens fresh NAT bindings;
  - aioice: C{Connection.connect()} on the controlling side, both agents
    started together once they have each other's candidates (exchanged as
    files, which every namespace sees, so no signalling is timed), with our
    STUN server for server-reflexive candidates and no TURN.

Pairs that need a relay (a symmetric NAT with random ports and another
symmetric NAT) are run with C{--failing-trials} trials and a five-second
timeout, to show that they fail, not how fast; so are aioice's trials of
the pairs ours joins with a method aioice lacks: the birthday method
(random symmetric with a port-restricted cone), port prediction
(sequential symmetric with a port-restricted cone) and meeting runs (two
sequential symmetric NATs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import suppress
from datetime import date
from itertools import count
from pathlib import Path
from typing import Any

from tests.support.lab_servers import OURS, start_rendezvous, start_servers
from tests.support.natlab import Lab, Nat, NatSpec, NatType, nat_lab, require_lab
from tests.support.peer_runner import PeerProcess

NATS = [
    NatSpec("none", NatType.NONE, peers=2),
    NatSpec("full", NatType.FULL_CONE, peers=2),
    NatSpec("restricted", NatType.RESTRICTED_CONE, peers=2),
    NatSpec("portrestr", NatType.PORT_RESTRICTED_CONE, peers=2),
    NatSpec("symmetric", NatType.SYMMETRIC, peers=2),
    NatSpec("symmetric2", NatType.SYMMETRIC),
    NatSpec("sequential", NatType.SYMMETRIC_SEQUENTIAL),
    NatSpec("sequential2", NatType.SYMMETRIC_SEQUENTIAL),
]

LABELS = {
    "none": "no NAT",
    "full": "full cone",
    "restricted": "restricted cone",
    "portrestr": "port-restricted cone",
    "symmetric": "symmetric",
    "symmetric2": "symmetric (2nd)",
    "sequential": "symmetric, sequential ports",
    "sequential2": "symmetric, sequential ports (2nd)",
}

NEEDS_RELAY = {
    frozenset({"symmetric", "symmetric2"}),
    frozenset({"symmetric", "sequential"}),
}
"""Pairs no direct path can join: a symmetric NAT with random ports and another symmetric NAT."""

METHODS = {
    frozenset({"symmetric", "portrestr"}): "birthday method",
    frozenset({"sequential", "portrestr"}): "port prediction",
    frozenset({"sequential", "sequential2"}): "meeting runs",
}
"""Pairs ours joins with a method of its own, and aioice, without it, cannot."""

FAIL_TIMEOUT = 5.0
TARGET_MS = 100.0
MARKDOWN = Path(__file__).resolve().parent / "connect-matrix.md"

_serial = count(1)


def pairs() -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """(offerer, answerer) as (NAT, peer index): across NATs both ways round, then within."""
    crossing = ["none", "full", "restricted", "portrestr", "symmetric"]
    ordered = [(a, b) for a in crossing for b in crossing if a != b]
    ordered += [("symmetric", "symmetric2"), ("symmetric2", "symmetric")]
    ordered += [("portrestr", "sequential"), ("sequential", "portrestr")]
    ordered += [("sequential", "sequential2"), ("sequential2", "sequential")]
    ordered += [("sequential", "symmetric"), ("symmetric", "sequential")]
    result = [((a, 0), (b, 0)) for a, b in ordered]
    result += [((spec.name, 0), (spec.name, 1)) for spec in NATS if spec.peers == 2]
    return result


def needs_relay(offerer: str, answerer: str) -> bool:
    return frozenset({offerer, answerer}) in NEEDS_RELAY


def aioice_fails(offerer: str, answerer: str) -> bool:
    return frozenset({offerer, answerer}) in NEEDS_RELAY | METHODS.keys()


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile: a value that was measured, not an interpolation."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summarise(setups: list[float], paths: list[str], trials: int) -> dict[str, Any]:
    return {
        "trials": trials,
        "successes": len(setups),
        "median_ms": statistics.median(setups) if setups else None,
        "p95_ms": percentile(setups, 0.95),
        "setup_ms": setups,
        "paths": dict(Counter(paths)),
    }


# --- ours ---------------------------------------------------------------------------


def run_ours(
    lab: Lab,
    rendezvous: str,
    stun: str,
    offerer: tuple[str, int],
    answerer: tuple[str, int],
    trials: int,
    timeout: float | None,
) -> dict[str, Any]:
    serial = next(_serial)
    # Behaviour discovery runs, as in an application: port prediction and the
    # birthday method depend on it (it adds its ~0.2 s only to a set-up that
    # starts while it is still under way).
    common = ["--rendezvous", rendezvous, "--stun", stun, "--instances", str(trials)]
    common += ["--exit-after", "600"]
    if timeout is not None:
        common += ["--punch-timeout", str(timeout)]
    started = []
    try:
        # Their warnings (every failed punch of the pairs that need a relay)
        # would drown the table; the failures are counted and shown there.
        bob = PeerProcess.spawn(
            lab,
            lab.nat(answerer[0]).peers[answerer[1]].namespace,
            ["--name", f"b{serial}", *common],
            stderr=subprocess.DEVNULL,
        )
        started.append(bob)
        alice = PeerProcess.spawn(
            lab,
            lab.nat(offerer[0]).peers[offerer[1]].namespace,
            ["--name", f"a{serial}", *common, "--connect", f"b{serial}", "--trial-gap", "0.2"],
            stderr=subprocess.DEVNULL,
        )
        started.append(alice)
        alice.wait_for("done", timeout=60 + trials * ((timeout or 10.0) + 1))
    finally:
        for peer in started:
            peer.stop()
    connected = alice.of("connected")
    setups = [e["setup_ms"] for e in connected]
    paths = [f"{e['path']['local']}->{e['path']['remote']}" for e in connected]
    result = summarise(setups, paths, trials)
    result["errors"] = sorted({e["error"].split(" (")[0] for e in alice.of("failed")})
    return result


# --- aioice -------------------------------------------------------------------------


def run_aioice(
    lab: Lab,
    stun: str,
    offerer: tuple[str, int],
    answerer: tuple[str, int],
    trials: int,
    timeout: float,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as exchange:
        processes = {}
        for role, (nat, index) in (("answerer", answerer), ("offerer", offerer)):
            argv = [sys.executable, "-m", "benchmarks.bench_connect", "aioice-peer"]
            argv += ["--role", role, "--exchange", exchange, "--stun", stun]
            argv += ["--trials", str(trials), "--timeout", str(timeout)]
            processes[role] = lab.spawn(
                lab.nat(nat).peers[index].namespace, argv, stderr=subprocess.DEVNULL
            )
        deadline = 60 + trials * (timeout + 2)
        outputs = {}
        for role, process in processes.items():
            try:
                stdout, _ = process.communicate(timeout=deadline)
            except subprocess.TimeoutExpired:
                process.kill()
                stdout, _ = process.communicate()
            outputs[role] = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    records = outputs["offerer"]
    setups = [r["setup_ms"] for r in records if r["ok"]]
    paths = [f"{r['local']}->{r['remote']}" for r in records if r["ok"]]
    result = summarise(setups, paths, trials)
    result["errors"] = sorted({r["error"] for r in records if not r["ok"]})
    return result


async def _aioice_trials(options: argparse.Namespace) -> None:
    """One side of C{--trials} aioice connections, each with its own agent and sockets."""
    import aioice

    host, port = options.stun.rsplit(":", 1)
    exchange = Path(options.exchange)
    other = "answerer" if options.role == "offerer" else "offerer"
    for trial in range(1, options.trials + 1):
        connection = aioice.Connection(
            ice_controlling=options.role == "offerer",
            stun_server=(host, int(port)),
            use_ipv6=False,
        )
        record: dict[str, Any] = {"trial": trial, "ok": False}
        try:
            await connection.gather_candidates()
            mine = {
                "username": connection.local_username,
                "password": connection.local_password,
                "candidates": [c.to_sdp() for c in connection.local_candidates],
            }
            _publish(exchange / f"{trial}-{options.role}.json", mine)
            theirs = await _collect(exchange / f"{trial}-{other}.json", 30.0)
            connection.remote_username = theirs["username"]
            connection.remote_password = theirs["password"]
            for sdp in theirs["candidates"]:
                await connection.add_remote_candidate(aioice.Candidate.from_sdp(sdp))
            await connection.add_remote_candidate(None)
            started = time.perf_counter()
            await asyncio.wait_for(connection.connect(), options.timeout)
            record["setup_ms"] = round((time.perf_counter() - started) * 1000, 3)
            record["ok"] = True
            nominated = getattr(connection, "_nominated", {}).get(1)
            record["local"] = getattr(getattr(nominated, "local_candidate", None), "type", None)
            record["remote"] = getattr(getattr(nominated, "remote_candidate", None), "type", None)
        except (TimeoutError, ConnectionError, OSError) as e:
            record["error"] = f"{type(e).__name__}: {e}"
        # Neither side closes before both are done: a closed agent stops
        # answering checks the other may still need.
        _publish(exchange / f"{trial}-{options.role}.done", {})
        with suppress(TimeoutError):
            await _collect(exchange / f"{trial}-{other}.done", options.timeout + 5)
        await connection.close()
        print(json.dumps(record), flush=True)


def _publish(path: Path, value: dict[str, Any]) -> None:
    """Write atomically, so the other side never reads half a file."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(value))
    os.replace(partial, path)


async def _collect(path: Path, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing at {path.name}")
        await asyncio.sleep(0.001)
    return json.loads(path.read_text())


def aioice_peer(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_connect aioice-peer")
    parser.add_argument("--role", choices=["offerer", "answerer"], required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--stun", required=True)
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=10.0)
    asyncio.run(_aioice_trials(parser.parse_args(argv)))
    return 0


# --- the report ---------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _paths(paths: dict[str, int]) -> str:
    return ", ".join(f"{path} x{n}" if len(paths) > 1 else path for path, n in paths.items())


def markdown(rows: list[dict[str, Any]], options: argparse.Namespace, versions: str) -> str:
    lines = [
        "# Connection set-up on real NATs: ours against aioice",
        "",
        f"Measured {date.today().isoformat()} with `python -m benchmarks.bench_connect "
        f"--trials {options.trials} --loss {options.loss:g}` ({versions}).",
        "",
        "Ours: from `connect()` to the `PeerConnection` on the offering side, signalling through "
        "our rendezvous server included. aioice: `Connection.connect()` on the controlling side, "
        "after the candidates were exchanged (not timed). Both use our STUN server in the lab, "
        "no TURN. p95 is the nearest-rank value. Paths are local->remote candidate types: "
        "ours name the local candidate the peer reached (`None` where the side behind a "
        "symmetric NAT cannot name it), aioice's the local base of the nominated pair, which "
        "is always a host candidate. "
        f"Pairs that need a relay (and, for aioice, the pairs ours joins with a method "
        f"aioice lacks) ran "
        f"{options.failing_trials} trials with a {FAIL_TIMEOUT:g} s timeout. "
        f"Target for ours: median under {TARGET_MS:g} ms for every "
        "pair that connects directly.",
        "",
        "| offerer -> answerer | ours ok | ours median ms | ours p95 ms | ours paths "
        "| aioice ok | aioice median ms | aioice p95 ms | aioice paths |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours, theirs = row["ours"], row.get("aioice")
        name = f"{row['offerer_label']} -> {row['answerer_label']}"
        if row["needs_relay"]:
            name += " (needs a relay)"
        elif (method := _method(row)) is not None:
            name += f" ({method})"
        cells = [
            name,
            f"{ours['successes']}/{ours['trials']}",
            _ms(ours["median_ms"]),
            _ms(ours["p95_ms"]),
            _paths(ours["paths"]) or "-",
        ]
        if theirs is None:
            cells += ["-"] * 4
        else:
            cells += [
                f"{theirs['successes']}/{theirs['trials']}",
                _ms(theirs["median_ms"]),
                _ms(theirs["p95_ms"]),
                _paths(theirs["paths"]) or "-",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    slow = [
        f"{row['offerer_label']} -> {row['answerer_label']}"
        for row in rows
        if not row["needs_relay"]
        and _method(row) is None
        and (row["ours"]["median_ms"] is None or row["ours"]["median_ms"] >= TARGET_MS)
    ]
    lines += [
        "",
        "Pairs over the target: " + (", ".join(slow) if slow else "none") + ".",
        "",
    ]
    return "\n".join(lines)


def _method(row: dict[str, Any]) -> str | None:
    """
    The method of ours that joins the pair, if it needs one: its target is
    direct within 5 s, not 100 ms.
    """
    return METHODS.get(frozenset({row["offerer"].split()[0], row["answerer"].split()[0]}))


def _versions() -> str:
    import aioice

    import twisted

    return (
        f"{os.cpu_count()} CPUs, CPython {platform.python_version()}, "
        f"Twisted {twisted.__version__}, aioice {aioice.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["aioice-peer"]:
        return aioice_peer(arguments[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--failing-trials", type=int, default=3)
    parser.add_argument("--loss", type=float, default=0.0, help="percent, on every NAT")
    parser.add_argument("--json", help="also write every figure to this file")
    parser.add_argument("--markdown", default=str(MARKDOWN), help="where the table goes")
    parser.add_argument("--no-aioice", action="store_true")
    options = parser.parse_args(arguments)
    require_lab()
    rows: list[dict[str, Any]] = []
    with nat_lab(NATS) as lab, tempfile.TemporaryDirectory() as workdir:
        start_servers(lab, None, workdir)
        rendezvous = start_rendezvous(lab)
        stun = f"{lab.internet.addresses[0]}:{OURS}"
        nat: Nat
        for nat in lab.nats.values():
            nat.set_loss(options.loss)
        for offerer, answerer in pairs():
            relay = needs_relay(offerer[0], answerer[0])
            trials = min(options.trials, options.failing_trials) if relay else options.trials
            timeout = FAIL_TIMEOUT if relay else None
            hopeless = aioice_fails(offerer[0], answerer[0])
            aioice_trials = min(options.trials, options.failing_trials) if hopeless else trials
            row: dict[str, Any] = {
                "offerer": f"{offerer[0]} p{offerer[1]}",
                "answerer": f"{answerer[0]} p{answerer[1]}",
                "offerer_label": LABELS[offerer[0]],
                "answerer_label": LABELS[answerer[0]]
                + (" (same NAT)" if offerer[0] == answerer[0] else ""),
                "needs_relay": relay,
                "ours": run_ours(lab, rendezvous, stun, offerer, answerer, trials, timeout),
            }
            if not options.no_aioice:
                row["aioice"] = run_aioice(
                    lab, stun, offerer, answerer, aioice_trials, FAIL_TIMEOUT if hopeless else 10.0
                )
            rows.append(row)
            _print_row(row)
    versions = _versions()
    Path(options.markdown).write_text(markdown(rows, options, versions))
    if options.json:
        report = {"trials": options.trials, "loss": options.loss, "versions": versions}
        Path(options.json).write_text(json.dumps({**report, "rows": rows}, indent=2) + "\n")
    return 0


def _print_row(row: dict[str, Any]) -> None:
    ours, theirs = row["ours"], row.get("aioice")
    line = (
        f"{row['offerer_label'] + ' -> ' + row['answerer_label']:<48} "
        f"ours {ours['successes']:>2}/{ours['trials']:<2} median {_ms(ours['median_ms']):>5} ms "
        f"p95 {_ms(ours['p95_ms']):>5} ms {_paths(ours['paths'])}"
    )
    if theirs is not None:
        line += (
            f" | aioice {theirs['successes']:>2}/{theirs['trials']:<2} "
            f"median {_ms(theirs['median_ms']):>5} ms p95 {_ms(theirs['p95_ms']):>5} ms "
            f"{_paths(theirs['paths'])}"
        )
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
