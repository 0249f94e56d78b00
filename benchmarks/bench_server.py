"""
Our STUN server against coturn under the same offered load, on loopback.

    python -m benchmarks.bench_server [--rate 5000] [--duration 20] [--json PATH]

Each server runs alone as its own process (ours under twistd with the
default epoll reactor, coturn with one relay thread); the same load
generator (L{benchmarks.loadgen}) offers the same pre-built Binding requests
at a fixed rate, and the server's CPU time is read from /proc.  Reported:
the fraction answered, the server's CPU seconds per 100,000 answered
requests, and the ratio ours / coturn.  Then the rate is raised step by step
to find the highest load ours answers at 99.9 %.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks.loadgen import run_load
from tests.netutil import free_udp_port
from tests.support.coturn import CoturnMode, require_tool, running_coturn

REPO = Path(__file__).resolve().parent.parent
TARGET_FRACTION = 0.999


@contextmanager
def our_server() -> Iterator[tuple[int, tuple[str, int]]]:
    """C{twistd -n nat server --single} on a free loopback port: (pid, address)."""
    port = free_udp_port("127.0.0.1")
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from twisted.scripts.twistd import run; sys.exit(run())",
            "-n",
            "--pidfile=",
            "--logfile=/dev/null",
            "nat",
            "server",
            "--no-rendezvous",
            "--single",
            "--port",
            str(port),
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    try:
        _wait_until_answering(("127.0.0.1", port))
        yield process.pid, ("127.0.0.1", port)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _wait_until_answering(address: tuple[str, int], timeout: float = 15.0) -> None:
    request = bytes.fromhex("000100002112a442") + os.urandom(12)
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.2)
        while time.monotonic() < deadline:
            probe.sendto(request, address)
            try:
                probe.recvfrom(2048)
                return
            except TimeoutError:
                continue
    raise RuntimeError(f"server at {address} never answered")


def per_100k(result: Any) -> float:
    return float(result["server_cpu_seconds"]) / max(int(result["answered"]), 1) * 100_000


def summary(name: str, result: Any) -> dict[str, Any]:
    return {
        "server": name,
        "rate": result["requested_rate"],
        "duration": result["requested_duration"],
        "offered": result["offered"],
        "answered": result["answered"],
        "fraction_answered": result["fraction_answered"],
        "server_cpu_seconds": result["server_cpu_seconds"],
        "cpu_seconds_per_100k": per_100k(result),
        "latency_p50_ms": result["latency_p50_ms"],
        "latency_p99_ms": result["latency_p99_ms"],
        "generator_send_lag_p99_ms": result["send_lag_p99_ms"],
    }


def highest_rate(start: int, step: int, limit: int, duration: float) -> list[dict[str, Any]]:
    """Raise the rate from C{start} by C{step} until ours answers below 99.9 %."""
    steps: list[dict[str, Any]] = []
    rate = start
    while rate <= limit:
        with our_server() as (pid, (host, port)):
            result = run_load(
                host, port, rate=rate, duration=duration, software="bench", server_pid=pid
            )
        steps.append(summary("twisted-nat", result))
        print(f"  {rate:>7}/s  answered {result['fraction_answered']:.5f}", flush=True)
        if result["fraction_answered"] < TARGET_FRACTION:
            break
        rate += step
    return steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=3, help="fixed-load rounds (median kept)")
    parser.add_argument("--ramp-start", type=int, default=20000)
    parser.add_argument("--ramp-step", type=int, default=10000)
    parser.add_argument("--ramp-limit", type=int, default=250000)
    parser.add_argument("--ramp-duration", type=float, default=10.0)
    parser.add_argument("--no-ramp", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)

    require_tool("turnserver")
    results: dict[str, Any] = {"fixed_load": [], "cpu_ratios": []}
    print(f"fixed load: {args.rate}/s for {args.duration:.0f} s, {args.repeat} rounds")
    print(f"{'server':<12} {'answered':>10} {'fraction':>9} {'CPU s/100k':>11} {'p99 ms':>8}")
    for _ in range(args.repeat):
        with our_server() as (pid, (host, port)):
            ours = run_load(
                host, port, rate=args.rate, duration=args.duration, software="bench", server_pid=pid
            )
        with running_coturn(CoturnMode.STUN, relay_threads=1) as coturn:
            theirs = run_load(
                coturn.host,
                coturn.port,
                rate=args.rate,
                duration=args.duration,
                software="bench",
                server_pid=coturn.pid,
            )
        rows = [summary("twisted-nat", ours), summary("coturn", theirs)]
        results["fixed_load"].extend(rows)
        results["cpu_ratios"].append(per_100k(ours) / per_100k(theirs))
        for row in rows:
            print(
                f"{row['server']:<12} {row['answered']:>10} {row['fraction_answered']:>9.5f} "
                f"{row['cpu_seconds_per_100k']:>11.3f} {row['latency_p99_ms']:>8.3f}"
            )
    results["cpu_ratio_median"] = statistics.median(results["cpu_ratios"])
    ratios = ", ".join(f"{r:.2f}" for r in results["cpu_ratios"])
    print(f"CPU per request, ours / coturn: median {results['cpu_ratio_median']:.2f}x ({ratios})")
    if not args.no_ramp:
        print("ramp (ours):")
        steps = highest_rate(args.ramp_start, args.ramp_step, args.ramp_limit, args.ramp_duration)
        passing = [s["rate"] for s in steps if s["fraction_answered"] >= TARGET_FRACTION]
        results["ramp"] = steps
        results["highest_rate_at_99_9"] = max(passing) if passing else None
        print(f"highest rate answered at 99.9 %: {results['highest_rate_at_99_9']}/s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
