"""
A file between two real NATs: C{twisted-nat send} against magic-wormhole.

    python -m benchmarks.bench_transfer [--trials 3] [--size-mib 64] [--json PATH]

Needs root (it builds the NAT lab of C{tests.support.natlab}) and the
C{bench} extra (magic-wormhole, its mailbox server and its transit relay).
The receiver is behind a port-restricted cone, the sender behind a
symmetric NAT with random ports.  Each tool has its own servers in the
lab's internet namespace: ours the STUN and rendezvous servers (and coturn
for TURN, should no direct path be found), magic-wormhole its mailbox
server and transit relay.

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
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from datetime import date
from pathlib import Path
from typing import Any

from tests.support.lab_fixtures import LabWorld, lab_world
from tests.support.lab_servers import TURN_CREDENTIALS
from tests.support.natlab import NatSpec, NatType

NATS = [
    NatSpec("portrestr", NatType.PORT_RESTRICTED_CONE),
    NatSpec("symmetric", NatType.SYMMETRIC),
]
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


def ours(world: LabWorld, source: Path, output: Path, keys: Path) -> dict[str, Any]:
    lab = world.lab
    receiving = lab.spawn(
        lab.nat("portrestr").peers[0].namespace,
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
            lab.nat("symmetric").peers[0].namespace,
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


def wormhole(world: LabWorld, source: Path, output: Path, code: str) -> dict[str, Any]:
    lab = world.lab
    server = lab.internet.addresses[0]
    tool = str(Path(sys.executable).parent / "wormhole")
    where = [
        *(tool, "--relay-url", f"ws://{server}:{MAILBOX}/v1"),
        *("--transit-helper", f"tcp:{server}:{TRANSIT}"),
    ]
    receive = " ".join([*where, "receive", "--accept-file", "--hide-progress", code])
    receiving = lab.spawn(
        lab.nat("portrestr").peers[0].namespace,
        ["sh", "-c", f"cd {output} && exec {receive}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        time.sleep(2.0)  # the receiver claims the code at the mailbox first
        started = time.monotonic()
        sending = lab.run(
            lab.nat("symmetric").peers[0].namespace,
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
        lab.spawn(
            lab.internet.namespace,
            [
                *(sys.executable, "-c", TWISTD, "-n", "--pidfile=", f"--logfile={workdir / name}"),
                *arguments,
            ],
            stdout=subprocess.DEVNULL,
        )
    time.sleep(3.0)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=64)
    parser.add_argument("--json", type=Path, default=None)
    options = parser.parse_args(argv)
    runs: dict[str, list[dict[str, Any]]] = {"twisted-nat": [], "magic-wormhole": []}
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
            for tool in runs:
                output = workdir / f"{tool}-{trial}"
                output.mkdir()
                if tool == "twisted-nat":
                    result = ours(world, source, output, keys)
                else:
                    result = wormhole(world, source, output, f"{trial + 7}-bench-transfer")
                if _sha256(output / "payload.bin") != expected:
                    raise RuntimeError(f"{tool}: the received file differs")
                runs[tool].append(result)
                print(f"trial {trial + 1} {tool}: {result}", flush=True)
                with suppress(OSError):
                    (output / "payload.bin").unlink()
    ours_median = statistics.median(r["seconds"] for r in runs["twisted-nat"])
    theirs_median = statistics.median(r["seconds"] for r in runs["magic-wormhole"])
    print(f"\n{options.size_mib} MiB, symmetric (random) -> port-restricted cone, median of")
    print(f"{options.trials} trials (sender start to both processes done):\n")
    print("| tool | seconds | paths |")
    print("|---|---|---|")
    for tool, median in (("twisted-nat", ours_median), ("magic-wormhole", theirs_median)):
        paths = ", ".join(sorted({r["path"] for r in runs[tool]}))
        print(f"| {tool} | {median:.2f} | {paths} |")
    print(f"\nratio (wormhole / ours): {theirs_median / ours_median:.2f}x")
    if options.json is not None:
        options.json.write_text(
            json.dumps(
                {
                    "date": date.today().isoformat(),
                    "machine": platform.machine(),
                    "python": platform.python_version(),
                    "size_mib": options.size_mib,
                    "runs": runs,
                    "median_seconds": {"twisted-nat": ours_median, "magic-wormhole": theirs_median},
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
