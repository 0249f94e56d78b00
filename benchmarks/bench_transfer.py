"""
A file between two real NATs: C{twisted-nat send} against magic-wormhole.

    python -m benchmarks.bench_transfer [--trials 3] [--size-mib 64]
        [--pairs SENDER:RECEIVER,...] [--loss PERCENT] [--json PATH]

Needs root (it builds the NAT lab of C{tests.support.natlab}) and the
C{bench} extra (magic-wormhole, its mailbox server and its transit relay).
Each pair (L{PAIRS}) is a sender behind one of the lab's NATs and a
receiver behind another: a symmetric NAT with random ports and a
port-restricted cone, both ways (our birthday method's direct path), two
symmetric NATs (a relay for both tools), and two peers with public
addresses (a direct path for both).  Each tool has its own servers in the
lab's internet namespace: ours the STUN and rendezvous servers and coturn
for TURN, magic-wormhole its mailbox server and transit relay.  With
C{--loss}, each NAT of a pair loses that share of the datagrams and
segments crossing its outside link, each way, while the pair runs.

What is timed, the same for both: from starting the sender, with the
receiver already waiting (ours has registered; wormhole's has claimed the
code), until both processes have exited; then the received file's SHA-256
is checked.  Whether the bytes went directly or through a relay is read
from each tool's own output.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from datetime import date
from pathlib import Path
from typing import Any

from tests.support.lab_fixtures import LabWorld, lab_world, loss_on
from tests.support.lab_servers import TURN_CREDENTIALS
from tests.support.natlab import NatSpec, NatType

NATS = [
    NatSpec("portrestr", NatType.PORT_RESTRICTED_CONE),
    NatSpec("symmetric", NatType.SYMMETRIC),
    NatSpec("symmetric2", NatType.SYMMETRIC),
    NatSpec("public", NatType.NONE),
    NatSpec("public2", NatType.NONE),
]
PAIRS = [
    ("symmetric", "portrestr"),
    ("portrestr", "symmetric"),
    ("symmetric", "symmetric2"),
    ("public", "public2"),
]
"""(sender's NAT, receiver's NAT) of each pair measured, by default."""
Runs = dict[tuple[str, str], dict[str, list[dict[str, Any]]]]
"""Each pair's results, by tool."""
CLI = "from twisted_nat.cli import main; main()"
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"
MAILBOX = 4000
TRANSIT = 4001
TIMEOUT = 600.0


def _ours_options(world: LabWorld, keys: Path, name: str) -> list[str]:
    assert world.turn is not None
    return [
        *("--rendezvous", world.rendezvous, "--stun", world.stun, "--timeout", "60"),
        *("--turn", world.turn, "--turn-user", TURN_CREDENTIALS.username),
        *("--turn-password", TURN_CREDENTIALS.password),
        *("--key", str(keys / f"{name}.key"), "--known-peers", str(keys / f"{name}.known")),
    ]


def _wait_for_line(process: subprocess.Popen[str], text: str, timeout: float) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if text in line:
            return
    raise RuntimeError(f"the receiver never printed {text!r}")


def ours(
    world: LabWorld, pair: tuple[str, str], source: Path, output: Path, keys: Path
) -> dict[str, Any]:
    lab = world.lab
    receiving = lab.spawn(
        lab.nat(pair[1]).peers[0].namespace,
        [
            *(sys.executable, "-c", CLI, "receive", "--name", "bench", "--yes", "--json"),
            *("--output", str(output), *_ours_options(world, keys, "receiver")),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_line(receiving, '"waiting"', 60)
        started = time.monotonic()
        sending = lab.run(
            lab.nat(pair[0]).peers[0].namespace,
            [
                *(sys.executable, "-c", CLI, "send", str(source), "--to", "bench", "--json"),
                *_ours_options(world, keys, "sender"),
            ],
            timeout=TIMEOUT,
        )
        assert receiving.stdout is not None
        rest = receiving.stdout.read()
        receiving.wait(timeout=60)
        seconds = time.monotonic() - started
    finally:
        if receiving.poll() is None:
            receiving.kill()
            receiving.wait()
    if sending.returncode != 0 or receiving.returncode != 0:
        raise RuntimeError(f"twisted-nat failed: {sending.stderr.strip()}")
    done = [json.loads(line) for line in rest.splitlines() if '"done"' in line][-1]
    return {"seconds": seconds, "path": done["path"], "data_seconds": done["seconds"]}


def wormhole(
    world: LabWorld, pair: tuple[str, str], source: Path, output: Path, code: str
) -> dict[str, Any]:
    lab = world.lab
    server = lab.internet.addresses[0]
    tool = str(Path(sys.executable).parent / "wormhole")
    where = [
        *(tool, "--relay-url", f"ws://{server}:{MAILBOX}/v1"),
        *("--transit-helper", f"tcp:{server}:{TRANSIT}"),
    ]
    receive = " ".join([*where, "receive", "--accept-file", "--hide-progress", code])
    receiving = lab.spawn(
        lab.nat(pair[1]).peers[0].namespace,
        ["sh", "-c", f"cd {output} && exec {receive}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(2.0)  # the receiver claims the code at the mailbox first
        started = time.monotonic()
        sending = lab.run(
            lab.nat(pair[0]).peers[0].namespace,
            [*where, "send", "--hide-progress", "--code", code, str(source)],
            timeout=TIMEOUT,
        )
        told, _ = receiving.communicate(timeout=TIMEOUT)
        seconds = time.monotonic() - started
    finally:
        if receiving.poll() is None:
            receiving.kill()
            receiving.wait()
    said = sending.stdout + sending.stderr
    if sending.returncode != 0 or receiving.returncode != 0:
        raise RuntimeError(f"wormhole failed: {said.strip()[-400:]} / {told.strip()[-400:]}")
    return {"seconds": seconds, "path": "relayed" if "relay" in said else "direct"}


def _start_wormhole_servers(world: LabWorld, workdir: Path) -> None:
    lab = world.lab
    server = lab.internet.addresses[0]
    for name, arguments in (
        ("mailbox", ["wormhole-mailbox", "--port", f"tcp:{MAILBOX}:interface={server}"]),
        ("transit", ["transitrelay", f"--port=tcp:{TRANSIT}:interface={server}"]),
    ):
        twistd = [sys.executable, "-c", TWISTD, "-n", "--pidfile=", f"--logfile={workdir / name}"]
        # In the temporary directory: the servers make their databases where they start.
        command = f"cd {shlex.quote(str(workdir))} && exec {shlex.join(twistd + arguments)}"
        lab.spawn(
            lab.internet.namespace,
            ["sh", "-c", command],
            stdout=subprocess.DEVNULL,
        )
    time.sleep(3.0)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in text.split(","):
        sender, _, receiver = item.partition(":")
        known = {spec.name for spec in NATS}
        if sender not in known or receiver not in known or sender == receiver:
            raise argparse.ArgumentTypeError(f"{item!r}: SENDER:RECEIVER of {sorted(known)}")
        pairs.append((sender, receiver))
    return pairs


def _figures(results: list[dict[str, Any]]) -> tuple[float, str, str]:
    seconds = [r["seconds"] for r in results]
    paths = ", ".join(sorted({r["path"] for r in results}))
    return statistics.median(seconds), f"{min(seconds):.2f}-{max(seconds):.2f}", paths


def _name(pair: tuple[str, str]) -> str:
    return f"{pair[0]} -> {pair[1]}"


def table(size_mib: int, trials: int, runs: Runs) -> str:
    """The Markdown table of every pair's medians, ranges, paths and ratio."""
    lines = [
        f"{size_mib} MiB, median (range) of {trials} trials, seconds from starting the sender"
        " to both processes done:",
        "",
        "| sender -> receiver | twisted-nat send | path | magic-wormhole | path |"
        " wormhole / ours |",
        "|---|---|---|---|---|---|",
    ]
    for pair, tools in runs.items():
        ours_median, ours_range, ours_paths = _figures(tools["twisted-nat"])
        theirs_median, theirs_range, theirs_paths = _figures(tools["magic-wormhole"])
        lines.append(
            f"| {_name(pair)} | **{ours_median:.2f}** ({ours_range}) | {ours_paths}"
            f" | {theirs_median:.2f} ({theirs_range}) | {theirs_paths}"
            f" | {theirs_median / ours_median:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--pairs", type=_pairs, default=PAIRS)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--json", type=Path, default=None)
    options = parser.parse_args(argv)
    runs: Runs = {pair: {"twisted-nat": [], "magic-wormhole": []} for pair in options.pairs}
    codes = 7
    with tempfile.TemporaryDirectory() as temporary, lab_world(NATS, turn=True) as world:
        workdir = Path(temporary)
        os.chmod(workdir, 0o755)
        source = workdir / "payload.bin"
        with source.open("wb") as f:
            for _ in range(options.size_mib):
                f.write(os.urandom(1 << 20))
        expected = _sha256(source)
        keys = workdir / "keys"
        keys.mkdir()
        _start_wormhole_servers(world, workdir)
        for trial in range(options.trials):
            for pair, tools in runs.items():
                lossy = [world.lab.nat(name) for name in pair] if options.loss else []
                for tool, results in tools.items():
                    output = workdir / f"{tool}-{codes}"
                    output.mkdir()
                    with loss_on(lossy, options.loss):
                        if tool == "twisted-nat":
                            result = ours(world, pair, source, output, keys)
                        else:
                            code = f"{codes}-bench-transfer"
                            result = wormhole(world, pair, source, output, code)
                    codes += 1
                    if _sha256(output / "payload.bin") != expected:
                        raise RuntimeError(f"{tool}: the received file differs")
                    results.append(result)
                    print(f"trial {trial + 1} {_name(pair)} {tool}: {result}", flush=True)
                    with suppress(OSError):
                        (output / "payload.bin").unlink()
    print()
    if options.loss:
        print(f"{options.loss:g} % loss on each NAT's outside link, each way")
    print(table(options.size_mib, options.trials, runs))
    if options.json is not None:
        options.json.write_text(
            json.dumps(
                {
                    "date": date.today().isoformat(),
                    "machine": platform.machine(),
                    "python": platform.python_version(),
                    "size_mib": options.size_mib,
                    "loss_percent": options.loss,
                    "runs": {_name(pair): tools for pair, tools in runs.items()},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
