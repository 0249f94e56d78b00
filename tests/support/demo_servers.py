"""
What C{twistd -n nat} runs (an RFC 5780 STUN server on 127.0.0.1 and
127.0.0.2, a rendezvous server, and the peers alice and bob), on free ports
and in a process of its own: the loopback servers the README's examples run
against.

    python -m tests.support.demo_servers

Once bob is registered at the rendezvous it prints one JSON line,
C{{"stun": [PORT, ALTERNATE_PORT], "rendezvous": PORT}}, and then serves
until it is terminated.  L{running_demo} starts it and stops it.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import react

from tests.netutil import free_tcp_port, free_udp_ports
from twisted_nat.service import NATTraversalService
from twisted_nat.tap.make import demo_service
from twisted_nat.tap.options import DemoOptions

REPO = Path(__file__).resolve().parent.parent.parent


@attrs.frozen
class Demo:
    """Where a running demonstration's servers listen."""

    stun: tuple[str, int]
    stun_alternate: tuple[str, int]
    rendezvous_port: int

    @property
    def rendezvous(self) -> str:
        """The rendezvous server's client endpoint string."""
        return f"tcp:host=127.0.0.1:port={self.rendezvous_port}"


async def serve(reactor: Any) -> None:
    primary, alternate = free_udp_ports(2, "127.0.0.1", "127.0.0.2")
    rendezvous = free_tcp_port("127.0.0.1")
    options = DemoOptions()
    options.parseOptions(["--rendezvous", f"tcp:{rendezvous}:interface=127.0.0.1"])
    demo = demo_service(reactor, options, stun=(("127.0.0.1", primary), ("127.0.0.2", alternate)))
    demo.startService()
    [bob] = [s for s in demo if isinstance(s, NATTraversalService) and s.peer_name == "bob"]
    assert bob.signaling is not None
    await bob.ready()
    await bob.signaling.when_registered()
    print(json.dumps({"stun": [primary, alternate], "rendezvous": rendezvous}), flush=True)
    await Deferred()  # until terminated


@contextmanager
def running_demo(timeout: float = 15.0) -> Iterator[Demo]:
    """Run the demonstration in a child process while the block runs."""
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.demo_servers"],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        try:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], timeout)
            line = process.stdout.readline() if ready else ""
            if not line:
                process.kill()
                process.wait()
                errors.seek(0)
                raise RuntimeError(f"the demonstration did not start:\n{errors.read()}")
            ports = json.loads(line)
            yield Demo(
                ("127.0.0.1", ports["stun"][0]),
                ("127.0.0.2", ports["stun"][1]),
                ports["rendezvous"],
            )
        finally:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(serve(reactor)))
