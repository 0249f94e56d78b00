"""
C{twisted-nat send} and C{twisted-nat receive} across real NATs, from a
peer behind a symmetric NAT with random ports to a peer behind a
port-restricted cone (the birthday method's pair), with a TURN server
beside them: 64 MiB as it is; a file whose direct path is cut for 15 s in
the middle (it moves to the relay and back, in one run); and a file at
10 % loss on both NATs.  The machine is shared, so only correctness is
asserted: both commands succeed and the SHA-256 of what arrived is the
SHA-256 of what was sent; the paths and the times are printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.lab_fixtures import LabWorld, lab_fixtures, loss_on
from tests.support.lab_servers import TURN_CREDENTIALS
from tests.support.natlab import NatSpec, NatType

pytestmark = pytest.mark.lab

NATS = [
    NatSpec("portrestr", NatType.PORT_RESTRICTED_CONE),
    NatSpec("symmetric", NatType.SYMMETRIC),
]
CLI = "from twisted_nat.cli import main; main()"
SIZE = 64 << 20
CUT_SIZE = 1 << 30
"""Large enough to be in flight through the cut, the relay and the move back."""
CUT = 15.0
KILL_SIZE = 256 << 20
LOSSY_SIZE = 4 << 20
TIMEOUT = 300.0
FAST_KEEPALIVE = ("--keepalive-interval", "1")
"""A dead path is found in about 6 s, well inside the cut."""

world, peers = lab_fixtures(NATS, turn=True)


def random_file(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        for _ in range(size >> 20):
            f.write(os.urandom(1 << 20))
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def options(world: LabWorld, home: Path, name: str) -> list[str]:
    assert world.turn is not None
    return [
        *("--rendezvous", world.rendezvous, "--stun", world.stun, "--timeout", "60"),
        *("--turn", world.turn, "--turn-user", TURN_CREDENTIALS.username),
        *("--turn-password", TURN_CREDENTIALS.password),
        *("--key", str(home / f"{name}.key"), "--known-peers", str(home / f"{name}.known")),
    ]


def lines_of(process: subprocess.Popen[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put("")

    threading.Thread(target=read, daemon=True).start()
    return lines


def events(lines: queue.Queue[str], until: str, timeout: float) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no {until} within {timeout:.0f} s: {seen[-5:]}") from None
        if not line:
            raise AssertionError(f"ended before {until}: {seen}")
        seen.append(json.loads(line))
        if seen[-1]["event"] == until:
            return seen


def test_64_mib_from_a_random_symmetric_nat_to_a_port_restricted_cone(world, tmp_path):
    lab = world.lab
    source = random_file(tmp_path / "payload.bin", SIZE)
    output = tmp_path / "output"
    output.mkdir()
    receiving = lab.spawn(
        lab.nat("portrestr").peers[0].namespace,
        [
            *(sys.executable, "-c", CLI, "receive", "--name", "bob", "--output", str(output)),
            *("--yes", "--json", *options(world, tmp_path, "bob")),
        ],
        stderr=subprocess.PIPE,
    )
    try:
        lines = lines_of(receiving)
        events(lines, "waiting", 60)
        started = time.monotonic()
        sending = lab.run(
            lab.nat("symmetric").peers[0].namespace,
            [
                *(sys.executable, "-c", CLI, "send", str(source), "--to", "bob", "--json"),
                *options(world, tmp_path, "alice"),
            ],
            timeout=TIMEOUT,
        )
        seconds = time.monotonic() - started
        assert sending.returncode == 0, sending.stderr
        received = events(lines, "done", 60)
        assert receiving.wait(timeout=60) == 0
    finally:
        if receiving.poll() is None:
            receiving.kill()
            receiving.wait()
    [done] = [event for event in received if event["event"] == "done"]
    assert done["ok"] and done["bytes"] == SIZE
    assert sha256(output / "payload.bin") == sha256(source)
    sent = [json.loads(line) for line in sending.stdout.splitlines()]
    [connected] = [event for event in sent if event["event"] == "connected"]
    print(
        f"\n64 MiB symmetric (random) -> port-restricted: {seconds:.1f} s for the sender's "
        f"whole run, path {done['path']} ({connected['path']}), "
        f"{done['path_changes']} path changes, receiver's data phase {done['seconds']:.1f} s"
    )


def said(process: subprocess.Popen[str]) -> str:
    """What an ended process wrote on its standard error."""
    return process.stderr.read() if process.stderr is not None else ""


class Transfer:
    """
    C{twisted-nat receive --name NAME} behind the port-restricted cone,
    waiting, and C{twisted-nat send} of C{source} behind the symmetric NAT,
    both with C{--json} and C{extra} options, their lines read as they
    come.  Each test's receiver has a name of its own: the rendezvous
    server binds a name to the first key that takes it.
    """

    def __init__(self, world: LabWorld, home: Path, name: str, source: Path, *extra: str) -> None:
        lab = world.lab
        self.output = home / "output"
        self.output.mkdir()
        self.receiving = lab.spawn(
            lab.nat("portrestr").peers[0].namespace,
            [
                *(sys.executable, "-c", CLI, "receive", "--name", name),
                *("--output", str(self.output), "--yes", "--json"),
                *options(world, home, name),
                *extra,
            ],
            stderr=subprocess.PIPE,
        )
        self.sending: subprocess.Popen[str] | None = None
        self.seconds = 0.0
        self.received = lines_of(self.receiving)
        try:
            events(self.received, "waiting", 60)
        except AssertionError as e:
            self.stop()
            raise AssertionError(f"{e}; the receiver said: {said(self.receiving)}") from None
        self.started = time.monotonic()
        self.sending = lab.spawn(
            lab.nat("symmetric").peers[0].namespace,
            [
                *(sys.executable, "-c", CLI, "send", str(source), "--to", name, "--json"),
                *options(world, home, "alice"),
                *extra,
            ],
            stderr=subprocess.PIPE,
        )
        self.sent = lines_of(self.sending)

    def finish(self, sent: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], ...]:
        """Both sides' events to their ends (C{sent}: the sender's so far), both exited 0."""
        assert self.sending is not None
        sent = sent + events(self.sent, "done", TIMEOUT)
        seconds = time.monotonic() - self.started
        received = events(self.received, "done", 60)
        assert self.sending.wait(timeout=60) == 0, said(self.sending)
        assert self.receiving.wait(timeout=60) == 0, said(self.receiving)
        self.seconds = seconds
        return sent, received

    def stop(self) -> None:
        for process in (self.sending, self.receiving):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def one_whole_file(sent: list[dict[str, Any]], received: list[dict[str, Any]], size: int) -> None:
    """One file, sent whole in one run: no part resumed, no file failed, both done."""
    assert not [e for e in sent + received if e["event"] == "resume"]
    for side in (sent, received):
        [file] = [e for e in side if e["event"] == "file"]
        assert file["ok"] and file["size"] == size, file
        [done] = [e for e in side if e["event"] == "done"]
        assert done["ok"] and done["files"] == 1 and done["bytes"] == size, done


def test_a_direct_path_cut_for_15_s_moves_to_the_relay_and_back_in_one_run(world, tmp_path):
    """
    Mid-transfer, the two NATs lose each other for 15 s (an nftables drop
    on the symmetric NAT's outside link, for the other NAT's address
    only: the servers stay reachable).  Keep-alive (every second here)
    finds the path dead, the sender punches again and the new session
    takes the relay; when the sites see each other again, the relayed
    session moves back to a direct path.  QUIC sees none of it but a
    pause: the file arrives whole in the same run, no stream reset.
    """
    lab = world.lab
    source = random_file(tmp_path / "payload.bin", CUT_SIZE)
    near, far = lab.nat("symmetric"), lab.nat("portrestr")
    transfer = Transfer(world, tmp_path, "carol", source, *FAST_KEEPALIVE)
    try:
        sent = events(transfer.sent, "accepted", 90)
        sent += events(transfer.sent, "progress", 30)
        # The first path may be the relay, moving to a direct one soon after.
        while sent[-1]["bytes"] < CUT_SIZE // 16 or sent[-1]["path"] != "direct":
            sent += events(transfer.sent, "progress", 30)
        at_cut, since_cut = sent[-1]["bytes"], len(sent)
        cut = time.monotonic()
        try:
            near.block(far.public_address)
            sent += events(transfer.sent, "path", CUT)
            assert sent[-1]["path"] == "relayed", sent[-1]
            relayed_after = time.monotonic() - cut
            time.sleep(max(0.0, cut + CUT - time.monotonic()))
        finally:
            near.block()
        back = time.monotonic()
        sent += events(transfer.sent, "path", 60)
        assert sent[-1]["path"] == "direct", sent[-1]
        direct_after = time.monotonic() - back
        progress = [e for e in sent if e["event"] == "progress"]
        at_return = progress[-1]["bytes"]
        sent, received = transfer.finish(sent)
    finally:
        transfer.stop()
    assert at_return < CUT_SIZE, "the file was no longer in flight when the path came back"
    one_whole_file(sent, received, CUT_SIZE)
    paths = [e["path"] for e in sent[since_cut:] if e["event"] == "path"]
    assert paths[0] == "relayed" and paths[-1] == "direct", paths
    answered = [e["path"] for e in received if e["event"] == "path"]
    assert "relayed" in answered and answered[-1] == "direct", answered
    assert sha256(transfer.output / "payload.bin") == sha256(source)
    [done] = [e for e in received if e["event"] == "done"]
    print(
        f"\n{CUT_SIZE >> 20} MiB, direct path cut for {CUT:.0f} s after {at_cut >> 20} MiB: "
        f"relayed {relayed_after:.1f} s into the cut, direct again {direct_after:.1f} s after it, "
        f"paths after the cut {paths}; sender's whole run {transfer.seconds:.1f} s, "
        f"receiver's data phase {done['seconds']:.1f} s ({done['path_changes']} path changes)"
    )


def test_a_file_at_10_percent_loss_on_both_nats_arrives_whole(world, tmp_path):
    """
    10 % of the packets on each NAT's outside link dropped, each way (a
    datagram between the peers crosses both: about 19 % lost), from
    before the rendezvous to the end: QUIC retransmits, and the file
    arrives whole in one run.
    """
    lab = world.lab
    source = random_file(tmp_path / "payload.bin", LOSSY_SIZE)
    with loss_on([lab.nat("symmetric"), lab.nat("portrestr")], 10):
        transfer = Transfer(world, tmp_path, "dave", source)
        try:
            sent, received = transfer.finish([])
        finally:
            transfer.stop()
    one_whole_file(sent, received, LOSSY_SIZE)
    assert sha256(transfer.output / "payload.bin") == sha256(source)
    [done] = [e for e in received if e["event"] == "done"]
    print(
        f"\n{LOSSY_SIZE >> 20} MiB at 10 % loss on both NATs: sender's whole run "
        f"{transfer.seconds:.1f} s, receiver's data phase {done['seconds']:.1f} s, "
        f"path {done['path']} ({done['path_changes']} path changes)"
    )


def test_a_sender_killed_mid_transfer_ends_the_receiver_with_one_line_and_a_part_file(
    world, tmp_path
):
    """
    The sender's process is killed mid-transfer (default keep-alive): the
    receiver's liveness checks find the path dead, nobody punches again,
    and once the connection has been reconnecting for the streams'
    path-lost timeout its streams fail: the receiver exits non-zero with
    one line, and the part file stays for a resume.
    """
    source = random_file(tmp_path / "payload.bin", KILL_SIZE)
    transfer = Transfer(world, tmp_path, "erin", source)
    assert transfer.sending is not None
    try:
        sent = events(transfer.sent, "accepted", 90)
        sent += events(transfer.sent, "progress", 30)
        while sent[-1]["bytes"] < KILL_SIZE // 16:
            sent += events(transfer.sent, "progress", 30)
        transfer.sending.kill()
        transfer.sending.wait()
        killed = time.monotonic()
        status = transfer.receiving.wait(timeout=TIMEOUT)
        seconds = time.monotonic() - killed
        error = said(transfer.receiving)
    finally:
        transfer.stop()
    assert status != 0
    lines = [line for line in error.splitlines() if line.startswith("twisted-nat:")]
    assert len(lines) == 1, error
    assert "the sender went away: the path to" in lines[0], error
    assert "was lost and not found again in 20 s" in lines[0], error
    assert "run the same command again to resume" in lines[0], error
    part = transfer.output / ".payload.bin.tn-part"
    assert 0 < part.stat().st_size < KILL_SIZE
    assert not (transfer.output / "payload.bin").exists()
    print(
        f"\nsender killed after {sent[-1]['bytes'] >> 20} MiB of {KILL_SIZE >> 20}: the receiver "
        f"exited {status} {seconds:.1f} s later, part file {part.stat().st_size >> 20} MiB; "
        f"it said: {lines[0]}"
    )
