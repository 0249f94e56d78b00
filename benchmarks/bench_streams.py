"""
QUIC stream throughput on loopback: twisted-nat's streams against a stock
asyncio aioquic pair doing the same transfer, and ours through coturn.

    python -m benchmarks.bench_streams [--mib 64] [--runs 5] [--json PATH]

Each run of each kind starts two fresh processes, a receiver and a sender
(L{benchmarks.streams_ours}, L{benchmarks.streams_aioquic}), that send N
MiB over one stream on 127.0.0.1 and report their own wall time and CPU
(C{getrusage}: user + system) from the stream's first byte: the sender
until the receiver's one-byte reply to the stream's end, the receiver
until that end.  Throughput is N MiB over the sender's time; CPU per MiB
is each side's CPU over N.  The kinds are interleaved run by run, so a
load that comes and goes on the machine falls on each alike.

  - ours: two twisted-nat services (rendezvous: C{twistd nat server} on
    loopback), the stream through a push producer, 64 KiB writes.
  - aioquic: aioquic's C{serve} and C{connect} with twisted-nat's default
    stream settings (cubic, 1200-byte datagrams, 1 MiB stream window,
    4 MiB connection window), the payload given to
    C{send_stream_data} at once, as aioquic's examples do.
  - ours relayed: as ours, but both peers offer only their relayed
    candidates (C{PeerSettings.relay_only}), so every datagram goes
    through coturn (UDP); skipped when coturn is not installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import date
from pathlib import Path
from typing import Any

from tests.netutil import free_tcp_port, free_udp_ports
from tests.support.coturn import CoturnMode, coturn_path, running_coturn

REPO = Path(__file__).resolve().parent.parent
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"
USER, PASSWORD, REALM = "bench-user", "bench-password", "bench.test"
TIMEOUT = 300.0
KINDS = ("ours", "aioquic", "ours relayed")
_TICKS = os.sysconf("SC_CLK_TCK")


def _process_cpu(pid: int) -> float:
    """User + system seconds of another process (coturn), from /proc; 0 where it is missing."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _spawn(arguments: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *arguments],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _event(process: subprocess.Popen[str], event: str) -> dict[str, Any]:
    """The next line of C{process} that reports C{event}."""
    assert process.stdout is not None
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        record: dict[str, Any] = json.loads(line)
        if record["event"] == event:
            return record
    raise RuntimeError(f"a benchmark process ended before reporting {event!r}")


@contextmanager
def nat_server() -> Iterator[str]:
    """C{twistd nat server} on loopback: its rendezvous's client endpoint string."""
    primary, alternate = free_udp_ports(2, "127.0.0.1", "127.0.0.2")
    port = free_tcp_port("127.0.0.1")
    process = _spawn(
        [
            *("-c", TWISTD, "-n", "--pidfile=", "--logfile=/dev/null"),
            *("nat", "server", "--port", str(primary), "--alternate-port", str(alternate)),
            *("--rendezvous", f"tcp:{port}:interface=127.0.0.1"),
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("twistd nat server did not start") from None
                time.sleep(0.1)
        yield f"tcp:host=127.0.0.1:port={port}"
    finally:
        _stop(process)


Spawner = Callable[[list[str]], "subprocess.Popen[str]"]
"""Starts C{python ARGUMENTS} somewhere: on this host, or in a lab's namespace."""


def pair(
    receiver: list[str],
    sender: list[str],
    spawn_receiver: Spawner = _spawn,
    spawn_sender: Spawner = _spawn,
) -> dict[str, Any]:
    """One transfer: the receiver's process, once ready, then the sender's; both stopped after."""
    receiving = spawn_receiver(receiver)
    sending: subprocess.Popen[str] | None = None
    try:
        _event(receiving, "ready")
        sending = spawn_sender(sender)
        sent = _event(sending, "sent")
        received = _event(receiving, "received")
    finally:
        for process in (sending, receiving):
            if process is not None:
                _stop(process)
    return result_of(sent, received)


def result_of(sent: dict[str, Any], received: dict[str, Any]) -> dict[str, Any]:
    """One run's figures from the two sides' reports; a short transfer is an error."""
    if received["bytes"] != sent["bytes"]:
        raise RuntimeError(f"sent {sent['bytes']} bytes, {received['bytes']} arrived")
    mib = sent["bytes"] / (1 << 20)
    return {
        "seconds": sent["seconds"],
        "mib_per_second": mib / sent["seconds"],
        "sender_cpu_per_mib": sent["cpu"] / mib,
        "receiver_cpu_per_mib": received["cpu"] / mib,
        "relayed": sent.get("relayed", False),
    }


def ours(rendezvous: str, mib: int, run: int, turn: list[str] | None = None) -> dict[str, Any]:
    common = ["--rendezvous", rendezvous, *(turn or [])]
    receiver, sender = f"bob-{run}", f"alice-{run}"
    result = pair(
        ["-m", "benchmarks.streams_ours", "receive", "--name", receiver, *common],
        [
            *("-m", "benchmarks.streams_ours", "send", "--name", sender, "--to", receiver),
            *("--mib", str(mib), *common),
        ],
    )
    if result["relayed"] != (turn is not None):
        raise RuntimeError(f"the stream went {'relayed' if result['relayed'] else 'direct'}")
    return result


def aioquic(mib: int) -> dict[str, Any]:
    [port] = free_udp_ports(1, "127.0.0.1")
    return pair(
        ["-m", "benchmarks.streams_aioquic", "server", str(port)],
        ["-m", "benchmarks.streams_aioquic", "client", str(port), str(mib)],
    )


_FIGURES = ("seconds", "mib_per_second", "sender_cpu_per_mib", "receiver_cpu_per_mib")


def _summary(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    return {
        key: {
            "median": statistics.median(r[key] for r in results),
            "min": min(r[key] for r in results),
            "max": max(r[key] for r in results),
        }
        for key in _FIGURES
        if all(key in r for r in results)
    }


def _ratios(
    ours: list[dict[str, Any]], theirs: list[dict[str, Any]]
) -> dict[str, dict[str, float]]:
    """Ours over theirs, run by run: interleaved runs share the machine's load of the moment."""
    paired = [
        {key: mine[key] / other[key] for key in _FIGURES if key != "seconds"}
        for mine, other in zip(ours, theirs, strict=True)
    ]
    return {key: figures for key, figures in _summary(paired).items() if key != "seconds"}


def _cell(figures: dict[str, float], digits: int) -> str:
    return (
        f"{figures['median']:.{digits}f} ({figures['min']:.{digits}f}-{figures['max']:.{digits}f})"
    )


def _ours_relayed(rendezvous: str, mib: int, run: int, coturn: Any) -> dict[str, Any]:
    turn = [
        *("--turn", f"turn:{coturn.host}:{coturn.port}?transport=udp", "--relay-only"),
        *("--turn-user", USER, "--turn-password", PASSWORD),
    ]
    before = _process_cpu(coturn.pid)
    result = ours(rendezvous, mib, run, turn)
    result["coturn_cpu_per_mib"] = (_process_cpu(coturn.pid) - before) / mib
    return result


def measure(mib: int, runs: int) -> dict[str, list[dict[str, Any]]]:
    """Every kind C{runs} times, interleaved."""
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
    with ExitStack() as stack:
        rendezvous = stack.enter_context(nat_server())
        coturn = None
        if coturn_path() is not None:
            coturn = stack.enter_context(
                running_coturn(
                    CoturnMode.TURN, relay_threads=1, username=USER, password=PASSWORD, realm=REALM
                )
            )
        for run in range(runs):
            results["ours"].append(ours(rendezvous, mib, run))
            results["aioquic"].append(aioquic(mib))
            if coturn is not None:
                results["ours relayed"].append(_ours_relayed(rendezvous, mib, runs + run, coturn))
            said = ", ".join(
                f"{kind} {done[-1]['mib_per_second']:.1f} MiB/s"
                for kind, done in results.items()
                if done
            )
            print(f"run {run + 1}: {said}", flush=True)
    return results


def summary_table(
    results: dict[str, list[dict[str, Any]]], runs: int
) -> dict[str, dict[str, dict[str, float]]]:
    """Print each kind's medians and ranges as a Markdown table, and return them."""
    summaries = {kind: _summary(done) for kind, done in results.items() if done}
    print(f"median (range) of {runs} runs\n")
    print("| | MiB/s | sender CPU s/MiB | receiver CPU s/MiB |")
    print("|---|---|---|---|")
    for kind, summary in summaries.items():
        print(
            f"| {kind} | {_cell(summary['mib_per_second'], 1)} "
            f"| {_cell(summary['sender_cpu_per_mib'], 4)} "
            f"| {_cell(summary['receiver_cpu_per_mib'], 4)} |"
        )
    return summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    options = parser.parse_args(argv)
    results = measure(options.mib, options.runs)
    print(f"\n{options.mib} MiB over one stream on loopback:\n")
    summaries = summary_table(results, options.runs)
    ratios = _ratios(results["ours"], results["aioquic"])
    print(
        "\nours / aioquic, median (range) of the runs' own ratios (each run's pair ran together):"
    )
    for key, label in (
        ("mib_per_second", "throughput"),
        ("sender_cpu_per_mib", "sender CPU per MiB"),
        ("receiver_cpu_per_mib", "receiver CPU per MiB"),
    ):
        print(f"  {label}: {_cell(ratios[key], 2)}")
    if results["ours relayed"]:
        coturn_cpu = statistics.median(r["coturn_cpu_per_mib"] for r in results["ours relayed"])
        print(f"coturn's CPU while relaying: {coturn_cpu:.4f} s/MiB (median)")
    else:
        print("ours relayed: skipped, coturn (turnserver) is not installed")
    if options.json is not None:
        options.json.write_text(
            json.dumps(
                {
                    "date": date.today().isoformat(),
                    "machine": platform.machine(),
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "mib": options.mib,
                    "runs": results,
                    "summary": summaries,
                    "ratios_ours_over_aioquic": ratios,
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
