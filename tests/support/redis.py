"""
Run Debian's C{redis-server} as a loopback-only child process, for the tests of
rendezvous nodes that share state through it.

Like coturn (L{tests.support.coturn}) it runs in the foreground as our child, on a free
port of 127.0.0.1, with every file it writes (the append-only file) in a private
temporary directory, and dies with the test process.  It is handed over once it answers
C{PING}.  It keeps an append-only file fsynced at every write (C{appendfsync always}),
as a deployment that must lose no binding would, so that L{RedisServer.restart} shows
what survives a restart.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import pytest

from tests.support.coturn import _die_with_parent_hook, require_tool

HOST = "127.0.0.1"
_START_ATTEMPTS = 3
_STOP_GRACE_SECONDS = 5.0


class RedisError(RuntimeError):
    """redis-server could not be started, or did not answer in time."""


def require_redis() -> str:
    """The path of C{redis-server}; skips the test without it (fails it under CI=true)."""
    return require_tool("redis-server")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@attrs.define
class RedisServer:
    """
    A running redis-server, as a test sees it.

    @ivar port: its TCP port on C{host} (L{HOST} unless it runs elsewhere, as in a lab).
    @ivar workdir: where its append-only file lives.
    @ivar protected: Redis's protected mode (no password: loopback clients only); off for a
        Redis in a lab's namespace, whose clients come from the lab's addresses.
    """

    executable: str
    port: int
    workdir: str
    appendfsync: str = "always"
    host: str = HOST
    protected: bool = True
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        """A Twisted client endpoint string for it."""
        return f"tcp:host={self.host}:port={self.port}"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            self.executable,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", self.workdir,
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--protected-mode", "yes" if self.protected else "no",
            "--logfile", os.path.join(self.workdir, "redis.log"),
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> None:
        """Start it (on the same port and files as before, after L{stop})."""
        self.process = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent_hook(),
        )
        deadline = time.monotonic() + timeout
        while not _answers(self.port):
            if self.process.poll() is not None:
                raise RedisError(f"redis-server exited: {self.read_log()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RedisError(f"redis-server did not answer within {timeout:g} s")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop it (SIGTERM, which lets it finish its append-only file; SIGKILL if slow)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def command(self, *words: str) -> bytes:
        """One command in RESP, blocking (for setting up and checking, outside Twisted)."""
        request = f"*{len(words)}\r\n".encode() + b"".join(
            f"${len(w.encode())}\r\n".encode() + w.encode() + b"\r\n" for w in words
        )
        with socket.create_connection((self.host, self.port), timeout=5) as sock:
            sock.sendall(request)
            return sock.recv(65536)

    def read_log(self) -> str:
        try:
            with open(os.path.join(self.workdir, "redis.log"), "rb") as log:
                return log.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""


@contextmanager
def running_redis(appendfsync: str = "always") -> Iterator[RedisServer]:
    """A redis-server on a free loopback port, stopped (and its files removed) afterwards."""
    executable = require_redis()
    with tempfile.TemporaryDirectory(prefix="redis-") as workdir:
        for _ in range(_START_ATTEMPTS):
            server = RedisServer(executable, _free_port(), workdir, appendfsync)
            try:
                server.start()
            except RedisError:
                continue  # most likely another process took the port meanwhile
            try:
                yield server
            finally:
                server.stop()
            return
        raise RedisError(f"redis-server did not start in {_START_ATTEMPTS} attempts")


def redis_fixtures() -> tuple[Any, Any]:
    """
    The fixtures C{redis_server} (a redis-server for the module) and C{redis}
    (that server, running and emptied, for one test: a test may have
    stopped it); a module takes them as C{redis_server, redis = redis_fixtures()}.
    """

    @pytest.fixture(scope="module")
    def redis_server() -> Iterator[RedisServer]:
        with running_redis() as server:
            yield server

    @pytest.fixture
    def redis(redis_server: RedisServer) -> RedisServer:
        """The module's redis-server, emptied, and running."""
        if redis_server.process is None:
            redis_server.start()
        redis_server.command("FLUSHALL")
        return redis_server

    return redis_server, redis
