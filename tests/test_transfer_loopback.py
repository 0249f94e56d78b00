"""
C{twisted-nat send} and C{twisted-nat receive} as a person runs them: each
a process of its own, against a real C{twistd nat server} on loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from tests.netutil import free_tcp_port, free_udp_ports

REPO = Path(__file__).resolve().parent.parent
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.exit(run())"
CLI = "from twisted_nat.cli import main; main()"
TIMEOUT = 60.0


@attrs.frozen
class Server:
    stun: int
    rendezvous: int

    def options(self) -> list[str]:
        return [
            "--rendezvous",
            f"tcp:host=127.0.0.1:port={self.rendezvous}",
            "--stun",
            f"127.0.0.1:{self.stun}",
            "--timeout",
            "20",
        ]


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    primary, alternate = free_udp_ports(2, "127.0.0.1", "127.0.0.2")
    rendezvous = free_tcp_port("127.0.0.1")
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [
                *(sys.executable, "-c", TWISTD, "-n", "--pidfile=", "--logfile=/dev/null"),
                *("nat", "server", "--port", str(primary), "--alternate-port", str(alternate)),
                *("--rendezvous", f"tcp:{rendezvous}:interface=127.0.0.1"),
            ],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.DEVNULL,
            stdout=errors,
            stderr=errors,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    socket.create_connection(("127.0.0.1", rendezvous), 0.5).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        errors.seek(0)
                        raise RuntimeError(
                            f"twistd nat server did not start:\n{errors.read()}"
                        ) from None
                    time.sleep(0.1)
            yield Server(primary, rendezvous)
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def environment(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "XDG_CONFIG_HOME": str(home)}


class Receiving:
    """A C{twisted-nat receive --json} process, and the JSON objects it printed."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put("")

    def next_event(self, kind: str, timeout: float = TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = ""
            if not line:
                raise AssertionError(f"no {kind} event; stderr: {self.stderr()}")
            event: dict[str, Any] = json.loads(line)
            self.events.append(event)
            if event["event"] == kind:
                return event

    def answer(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def finish(self) -> tuple[int, str]:
        assert self.process.stderr is not None
        self.process.wait(timeout=TIMEOUT)
        self._reader.join(timeout=TIMEOUT)
        while (line := self._lines.get_nowait()) != "":
            self.events.append(json.loads(line))
        return self.process.returncode, self.process.stderr.read()

    def stderr(self) -> str:
        if self.process.poll() is None:
            return "(running)"
        assert self.process.stderr is not None
        return self.process.stderr.read()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == kind]


def receive(server: Server, home: Path, output: Path, *options: str) -> Receiving:
    process = subprocess.Popen(
        [
            *(sys.executable, "-c", CLI, "receive", "--name", "bob", "--json"),
            *("--output", str(output), *server.options(), *options),
        ],
        cwd=REPO,
        env=environment(home),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    receiving = Receiving(process)
    receiving.next_event("waiting")
    return receiving


def send(server: Server, home: Path, *arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CLI, "send", *arguments, "--to", "bob", *server.options()],
        cwd=REPO,
        env=environment(home),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, errors = process.communicate(timeout=TIMEOUT)
    return process.returncode, errors


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def homes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """
    The sender's and the receiver's homes (their keys), one for the module:
    the rendezvous server binds the name bob to the first key that takes it.
    """
    return tmp_path_factory.mktemp("sender-home"), tmp_path_factory.mktemp("receiver-home")


@pytest.fixture
def places(tmp_path: Path, homes: tuple[Path, Path]) -> tuple[Path, Path, Path, Path]:
    """The sender's files and home, the receiver's output directory and home."""
    source, output = tmp_path / "source", tmp_path / "output"
    source.mkdir()
    output.mkdir()
    return source, homes[0], output, homes[1]


def test_files_and_a_directory_arrive_whole_once_accepted(server, places):
    source, sender_home, output, receiver_home = places
    (source / "photos" / "2024").mkdir(parents=True)
    (source / "photos" / "a.jpg").write_bytes(os.urandom(300_000))
    (source / "photos" / "2024" / "b.jpg").write_bytes(os.urandom(3_000_000))
    (source / "photos" / "empty").write_bytes(b"")
    (source / "notes.txt").write_text("hello\n")
    receiving = receive(server, receiver_home, output)
    sending = send(server, sender_home, str(source / "photos"), str(source / "notes.txt"))
    offer = receiving.next_event("ask")
    receiving.answer("y\n")
    code, errors = receiving.finish()
    assert (code, errors) == (0, "")
    assert finished(sending)[0] == 0
    names = {"photos/a.jpg", "photos/2024/b.jpg", "photos/empty", "notes.txt"}
    assert {event["name"] for event in receiving.of("file") if event["ok"]} == names
    for name in names:
        assert sha256(output / name) == sha256(source / name)
    assert offer["key"] == receiving.of("offer")[0]["key"]
    [done] = receiving.of("done")
    assert done["ok"] and done["path"] == "direct" and done["bytes"] == 3_300_006
    assert not [p for p in output.rglob("*") if p.name.endswith(".tn-part")]


def test_a_refusal_at_the_prompt_fails_both_and_writes_nothing(server, places):
    source, sender_home, output, receiver_home = places
    (source / "f").write_bytes(b"data")
    receiving = receive(server, receiver_home, output)
    sending = send(server, sender_home, str(source / "f"))
    receiving.next_event("ask")
    receiving.answer("n\n")
    code, errors = receiving.finish()
    assert code == 1 and errors == "twisted-nat: the receiver refused the transfer\n"
    code, errors = finished(sending)
    assert code == 1
    assert errors.endswith("twisted-nat: refused: the receiver refused the transfer\n")
    assert list(output.iterdir()) == []


def test_an_existing_file_is_not_overwritten_unless_asked(server, places):
    source, sender_home, output, receiver_home = places
    (source / "f").write_bytes(b"new")
    (output / "f").write_bytes(b"old")
    receiving = receive(server, receiver_home, output, "--yes")
    sending = send(server, sender_home, str(source / "f"))
    code, errors = receiving.finish()
    assert code == 1
    assert errors == "twisted-nat: f exists at the receiver (use --overwrite)\n"
    assert finished(sending)[0] == 1
    assert (output / "f").read_bytes() == b"old"

    receiving = receive(server, receiver_home, output, "--yes", "--overwrite")
    sending = send(server, sender_home, str(source / "f"))
    assert receiving.finish() == (0, "")
    assert finished(sending)[0] == 0
    assert (output / "f").read_bytes() == b"new"


def test_an_interrupted_transfer_resumes_where_it_stopped(server, places):
    source, sender_home, output, receiver_home = places
    big = source / "big.bin"
    with big.open("wb") as f:
        for _ in range(96):
            f.write(os.urandom(1 << 20))
    part = output / ".big.bin.tn-part"
    receiving = receive(server, receiver_home, output, "--yes")
    sending = send(server, sender_home, str(big))
    deadline = time.monotonic() + TIMEOUT
    while not (part.exists() and part.stat().st_size >= 2 << 20):
        assert time.monotonic() < deadline and sending.poll() is None, "no part file grew"
        time.sleep(0.005)
    sending.kill()
    sending.communicate()
    receiving.process.send_signal(signal.SIGINT)
    code, errors = receiving.finish()
    assert code == 1 and "run the same command again to resume" in errors
    assert not (output / "big.bin").exists()
    held = part.stat().st_size
    assert 0 < held < big.stat().st_size

    receiving = receive(server, receiver_home, output, "--yes")
    sending = send(server, sender_home, str(big))
    assert receiving.finish() == (0, "")
    assert finished(sending)[0] == 0
    [resume] = receiving.of("resume")
    assert resume["offset"] == resume["had"] >= held
    assert sha256(output / "big.bin") == sha256(big)
    assert not part.exists()


def test_a_file_already_there_is_not_sent_again(server, places):
    source, sender_home, output, receiver_home = places
    (source / "d").mkdir()
    (source / "d" / "same").write_bytes(b"x" * 1000)
    (source / "d" / "new").write_bytes(b"y" * 1000)
    (output / "d").mkdir()
    (output / "d" / "same").write_bytes(b"x" * 1000)
    receiving = receive(server, receiver_home, output, "--yes")
    sending = send(server, sender_home, str(source / "d"))
    assert receiving.finish() == (0, "")
    assert finished(sending)[0] == 0
    assert receiving.of("accepted") == [{"event": "accepted", "held": 1000}]
    assert [event["name"] for event in receiving.of("file")] == ["d/new"]


def test_mistakes_end_with_one_line_and_status_1(server, places, tmp_path):
    source, sender_home, output, receiver_home = places
    cases = [
        (["send", str(source)], "twisted-nat: name the receiver with --to NAME[=KEY]"),
        (["send", "--to", "bob"], "twisted-nat: name a file or directory to send"),
        (["receive"], "twisted-nat: a receiver needs --name NAME"),
        (
            ["receive", "--name", "bob", "--output", str(tmp_path / "nowhere")],
            f"twisted-nat: --output {tmp_path / 'nowhere'}: no such directory",
        ),
        (
            ["send", str(tmp_path / "missing"), "--to", "bob", *server.options()],
            f"twisted-nat: cannot send {tmp_path / 'missing'}: No such file or directory",
        ),
    ]
    for arguments, message in cases:
        result = subprocess.run(
            [sys.executable, "-c", CLI, *arguments],
            cwd=REPO,
            env=environment(sender_home),
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        assert (result.returncode, result.stderr) == (1, message + "\n"), arguments


def test_the_commands_exit_with_their_status_and_their_output_flushed():
    program = (
        "import sys; from twisted_nat.transfer.command import exit_at_once;"
        " sys.stdout.write('{\"event\": \"done\"}'); sys.stderr.write('twisted-nat: no');"
        " exit_at_once(3)"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        3,
        '{"event": "done"}',
        "twisted-nat: no",
    )
