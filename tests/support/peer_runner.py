"""
One peer of the NAT lab's hole-punching tests and connection benchmark: a
L{NATTraversalService} on the real reactor, run inside a peer's namespace,
driven by its options and by commands on stdin, and reporting what happens
as JSON lines on stdout, which the test reads with L{PeerProcess}.

    python -m tests.support.peer_runner --name alice \\
        --rendezvous tcp:host=H:port=P [--rendezvous ...] --stun H:3478 \\
        [--interface ADDRESS] \\
        [--instances N] [--connect PEER] [--wait-for-peer S] [--trial-gap S] \\
        [--keepalive-interval S] [--keepalive-timeout S] [--no-keepalive] \\
        [--no-liveness-checks] \\
        [--punch-timeout S] [--echo] [--send-every S --duration D [--burst K]] \\
        [--payload-size BYTES] [--no-detect] [--exit-when-done [--linger S]] \\
        [--turn URI --turn-user U --turn-password P]
        [--port-mapping MODE [--port-mapping-lease S]]
        [--exit-after S] [--verbose]

(C{--help} says what each does.)

Instances
=========

C{--instances N} runs N services in one process, each on a socket of its
own and registered as C{NAME-1} ... C{NAME-N} (just C{NAME} when N is 1).
A trial of a connection set-up needs fresh NAT bindings, hence a fresh
socket, and starting a new interpreter for each would make a twenty-trial
benchmark spend most of its time importing Twisted; this way a process
serves every trial of one side of a pair.  Every instance discovers the
NAT behaviour (unless C{--no-detect}): behind a NAT that allocates ports in
sequence, each needs it for port prediction.

Events
======

Every line is one JSON object with C{event}, C{time} (C{time.time()}, so
that lines of several processes on this machine can be put in order),
and, for events of one instance, C{name} and C{instance}:

    ready       the socket is bound, candidates are gathered and the name is
                registered: C{local_port}, C{public}, C{candidates}, C{nat}
                (null until discovery finishes)
    nat         behaviour discovery finished: C{nat_type}, C{mapping}, ...
    connected   C{peer}, C{role} (offerer or answerer), C{repunch}, C{session_id},
                C{path} (C{local} and C{remote} candidate kinds, C{remote_address},
                C{relayed}, C{base}),
                C{setup_ms} (offerer: from the C{connect()} call to the
                L{PeerConnection}; answerer: from the offer's arrival), C{punch_ms},
                C{rtt_ms}
    failed      C{peer}, C{role}, C{error_type}, C{error} (for a punch: the
                failure's report, naming every candidate pair), C{pairs}
    moved       the connection to C{peer} has a new path: a direct one after a
                relay (same C{session_id}), or a re-punch's (new C{session_id});
                C{path}, C{since_setup_ms} (from the first set-up's start)
    lost        keep-alive declared the path to C{peer} lost (a re-punch follows)
    state       the connection to C{peer} changed its C{state} (healthy,
                checking, reconnecting, closed)
    sent        C{peer}, C{count} (datagrams sent to it so far)
    data        C{peer}, C{count} (datagrams received from it so far), C{seq},
                C{kind} (C{data}, or C{echo} with C{echo_rtt_ms})
    status      the service's C{status()}, plus C{stats} (multiplexer, puncher,
                router counters), C{received} and C{sent} (datagrams per
                peer) and C{sessions} (session id per peer)
    done        C{--connect} or C{connect-all} finished: C{connected}, C{failed}
    error       a command could not be carried out: C{message}
    bye         the process is about to exit

Commands
========

One per line on stdin; C{@K} in front selects instance K (default 1):

    connect PEER                 offer a connection to PEER
    connect-all PEER             instance i connects to PEER-i (PEER with one
                                 instance), one after the other; then C{done}
    send PEER N                  send N numbered datagrams to PEER now
    stream PEER EVERY DURATION [BURST]
                                 send BURST datagrams (default 1) now and every
                                 EVERY seconds after, DURATION // EVERY + 1
                                 times in all
    status                       a C{status} event (every instance without C{@K})
    close PEER                   close the connection to PEER
    quit                         stop the services and exit

End of input is not a command: a peer started with its stdin closed runs on
its options alone until C{--exit-after}, C{--exit-when-done} or SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import queue
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import IO, Any

import attrs
from twisted.internet import stdio, task
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from twisted_nat.address import format_address, parse_hostport
from twisted_nat.bases import SHARED
from twisted_nat.connection import ConnectionClosed, PeerConnection
from twisted_nat.errors import PeerUnavailable, RendezvousUnavailable, UnknownPeer
from twisted_nat.keepalive import CheckSettings
from twisted_nat.nat import NATBehavior
from twisted_nat.portmap import Mode
from twisted_nat.punch import PunchFailed, PunchResult, PunchSettings
from twisted_nat.rendezvous import RendezvousClient
from twisted_nat.service import KeepAliveSettings, NATTraversalService, PeerEventsBase, PeerSettings
from twisted_nat.trust import PeerKey
from twisted_nat.turn import parse_turn_uri

Address = tuple[str, int]

DATA = b"D"
"""First byte of a numbered datagram."""

ECHO = b"E"
"""First byte of a datagram echoed back by a peer running with C{--echo}."""

_HEADER = struct.Struct("!Qd")
"""Sequence number and the sender's C{time.time()}: what an echo's round trip is timed by."""

_RETRY_DELAY = 0.05
"""Between offers to a peer that is not registered yet (C{--wait-for-peer})."""


def emit(event: str, **fields: Any) -> None:
    """Write one event line; flushed at once, since a test is waiting on it."""
    record = {"event": event, "time": time.time(), **fields}
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _stats(value: Any) -> dict[str, Any]:
    return attrs.asdict(value) if attrs.has(type(value)) else dict(vars(value))


def _path(connection: PeerConnection) -> dict[str, Any]:
    return {
        "local": connection.local_kind.value if connection.local_kind else None,
        "remote": connection.remote.kind.value,
        "remote_address": format_address(connection.remote_address),
        "relayed": connection.relayed,
        "base": None if connection.base is SHARED else str(connection.base),
    }


class _ObservedService(NATTraversalService):
    """The service, with when each connection started made visible (for its set-up time)."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.connect_started: dict[str, float] = {}

    def connect(
        self, name: str | None = None, key: PeerKey | None = None
    ) -> Deferred[PeerConnection]:
        if name is not None:
            self.connect_started[name] = time.perf_counter()
        return super().connect(name, key)


class _Watcher(PeerEventsBase):
    """Reports the moments of the service's life as the instance's events."""

    def __init__(self, instance: Instance, service: _ObservedService) -> None:
        self._instance = instance
        self._service = service
        self._offer_arrived: dict[str, float] = {}

    def offer_received(self, peer: str) -> None:
        self._offer_arrived[peer] = time.perf_counter()

    def connected(
        self, connection: PeerConnection, result: PunchResult, offerer: bool, again: bool
    ) -> None:
        now = time.perf_counter()
        assert connection.peer is not None
        started = (self._service.connect_started if offerer else self._offer_arrived).pop(
            connection.peer, None
        )
        setup = now - started if started is not None else result.elapsed
        self._instance.connected(connection, result, offerer, again, setup)

    def path_lost(self, connection: PeerConnection, reason: Failure) -> None:
        self._instance.emit("lost", peer=connection.peer, error=str(reason.value))

    def punch_failed(self, peer: str, offerer: bool, reason: Failure) -> None:
        self._instance.failed(peer, "offerer" if offerer else "answerer", reason)

    def nat_found(self, behavior: NATBehavior) -> None:
        self._instance.emit("nat", **behavior.as_json())


class _Counter(DatagramProtocol):
    """
    The application on every connection: counts what arrives, reports
    each datagram, and echoes numbered ones back when asked to.
    """

    noisy = False

    def __init__(self, instance: Instance, connection: PeerConnection) -> None:
        self._instance = instance
        self._connection = connection

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        peer = self._connection.peer or format_address(addr)
        count = self._instance.received[peer] = self._instance.received.get(peer, 0) + 1
        kind = datagram[:1]
        fields: dict[str, Any] = {"peer": peer, "count": count, "bytes": len(datagram)}
        if kind in (DATA, ECHO) and len(datagram) >= 1 + _HEADER.size:
            sequence, sent = _HEADER.unpack_from(datagram, 1)
            fields["seq"] = sequence
            if kind == ECHO:
                fields["kind"] = "echo"
                fields["echo_rtt_ms"] = round((time.time() - sent) * 1000, 3)
            else:
                fields["kind"] = "data"
                if self._instance.options.echo and not self._connection.closed:
                    self._connection.write(ECHO + datagram[1:])
        self._instance.emit("data", **fields)


def _interface(address: str | None) -> dict[str, Any]:
    """The settings that keep a peer on one address (loopback), or none."""
    return {} if address is None else {"interface": address, "host_addresses": [address]}


class Instance:
    """One service, its name, and what it has seen."""

    def __init__(self, runner: Runner, index: int, name: str, detect: bool) -> None:
        options = runner.options
        self.runner = runner
        self.options = options
        self.index = index
        self.name = name
        self.received: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.service = _ObservedService(
            reactor=runner.reactor,
            stun_servers=options.stun,
            name=name,
            rendezvous=options.rendezvous,
            protocol_factory=lambda connection: _Counter(self, connection),
            settings=PeerSettings(
                **_interface(options.interface),
                detect_behavior=detect,
                turn_servers=options.turn,
                keepalive=KeepAliveSettings(
                    enabled=not options.no_keepalive,
                    interval=options.keepalive_interval,
                    timeout=options.keepalive_timeout,
                    checks=CheckSettings(enabled=not options.no_liveness_checks),
                ),
                punch=PunchSettings(timeout=options.punch_timeout),
                port_mapping=Mode(options.port_mapping),
                port_mapping_lease=options.port_mapping_lease,
            ),
        )
        self.service.watch(_Watcher(self, self.service))

    def emit(self, event: str, **fields: Any) -> None:
        emit(event, **{**fields, "name": self.name, "instance": self.index})

    async def start(self) -> None:
        self.service.startService()
        await self.service.ready()
        signaling = self.service.signaling
        assert isinstance(signaling, RendezvousClient)
        await signaling.when_registered()
        status = self.service.status()
        self.emit(
            "ready",
            local_port=status["local_port"],
            public=status["public"],
            candidates=status["candidates"],
            nat=status["nat"],
        )

    # --- reports from the service ---

    def connected(
        self,
        connection: PeerConnection,
        result: PunchResult,
        controlling: bool,
        repunch: bool,
        setup: float,
    ) -> None:
        started = time.perf_counter() - setup
        if not repunch:
            connection.on_path_change(lambda moved: self.moved(moved, started))
            connection.on_state_change(
                lambda changed: self.emit("state", peer=changed.peer, state=changed.state)
            )
        self.emit(
            "connected",
            peer=connection.peer,
            role="offerer" if controlling else "answerer",
            repunch=repunch,
            session_id=connection.session_id.hex(),
            path=_path(connection),
            setup_ms=round(setup * 1000, 3),
            punch_ms=round(result.elapsed * 1000, 3),
            rtt_ms=None if result.rtt is None else round(result.rtt * 1000, 3),
        )
        if not repunch and self.options.send_every is not None and connection.peer is not None:
            self.stream(
                connection.peer, self.options.send_every, self.options.duration, self.options.burst
            )

    def moved(self, connection: PeerConnection, started: float) -> None:
        self.emit(
            "moved",
            peer=connection.peer,
            session_id=connection.session_id.hex(),
            path=_path(connection),
            since_setup_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    def failed(self, peer: str, role: str, failure: Failure) -> None:
        error = failure.value
        pairs = []
        if isinstance(error, PunchFailed):
            pairs = [
                {
                    "remote": pair.remote.kind.value,
                    "remote_address": format_address(pair.remote.address),
                    "punches_sent": pair.punches_sent,
                    "punches_received": pair.punches_received,
                    "acks_received": pair.acks_received,
                }
                for pair in error.pairs
            ]
        self.emit(
            "failed",
            peer=peer,
            role=role,
            error_type=type(error).__name__,
            error=str(error),
            pairs=pairs,
        )

    # --- commands ---

    async def connect(self, peer: str) -> bool:
        """
        Offer a connection to C{peer}; while it is not registered yet (or
        its node is gone and it has not registered at another yet), try
        again until C{--wait-for-peer} runs out, so that peers may be
        started in any order.  The set-up time reported is that of the
        offer that succeeded.
        """
        deadline = time.monotonic() + self.options.wait_for_peer
        while True:
            try:
                await self.service.connect(peer)
                return True
            except (UnknownPeer, PeerUnavailable, RendezvousUnavailable) as e:
                if time.monotonic() >= deadline:
                    self.failed(peer, "offerer", Failure(e))
                    return False
                await task.deferLater(self.runner.reactor, _RETRY_DELAY)
            except Exception:
                self.failed(peer, "offerer", Failure())
                return False

    def send(self, peer: str, count: int) -> None:
        connection = self.service.connections.get(peer)
        if connection is None:
            self.emit("error", message=f"no connection to {peer}")
            return
        try:
            for _ in range(count):
                sequence = self.sent[peer] = self.sent.get(peer, 0) + 1
                body = _HEADER.pack(sequence, time.time())
                padding = b"\0" * max(0, self.options.payload_size - 1 - len(body))
                connection.write(DATA + body + padding)
        except ConnectionClosed:
            self.emit("error", message=f"the connection to {peer} is closed")
            return
        self.emit("sent", peer=peer, count=self.sent[peer])

    def stream(self, peer: str, every: float, duration: float, burst: int = 1) -> None:
        """
        A burst now, and one every C{every} seconds while C{duration} lasts
        (counted in bursts, so that a late timer does not lose the last).
        """
        left = [int(duration // every) + 1]

        def tick() -> None:
            self.send(peer, burst)
            left[0] -= 1
            if left[0] <= 0:
                loop.stop()

        loop = task.LoopingCall(tick)
        loop.clock = self.runner.reactor
        loop.start(every, now=True).addErrback(
            lambda failure: self.emit("error", message=str(failure.value))
        )

    def status(self) -> None:
        status = self.service.status()
        status["stats"] = {
            "mux": _stats(self.service.mux.stats),
            "puncher": _stats(self.service.puncher.stats),
            "keeper": _stats(self.service.puncher.keeper.stats),
            "router": _stats(self.service.router.stats),
        }
        status["received"] = dict(self.received)
        status["sent"] = dict(self.sent)
        status["sessions"] = {
            peer: connection.session_id.hex()
            for peer, connection in self.service.connections.items()
        }
        self.emit("status", **status)


class _Commands(LineReceiver):
    """stdin: one command a line."""

    delimiter = b"\n"

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def lineReceived(self, line: bytes) -> None:
        self._runner.command(line.decode("utf-8", "replace").strip())

    def connectionLost(self, reason: Failure | None = None) -> None:
        pass  # end of input is not a command; see the module docstring


class Runner:
    """The instances, the commands, and the way out."""

    def __init__(self, reactor: Any, options: argparse.Namespace) -> None:
        self.reactor = reactor
        self.options = options
        count = options.instances
        self.instances = [
            Instance(
                self,
                index,
                options.name if count == 1 else f"{options.name}-{index}",
                detect=not options.no_detect,
            )
            for index in range(1, count + 1)
        ]
        self.finished: Deferred[None] = Deferred()

    def peer_name(self, peer: str, index: int) -> str:
        return peer if len(self.instances) == 1 else f"{peer}-{index}"

    async def run(self) -> None:
        if self.options.exit_after is not None:
            self.reactor.callLater(self.options.exit_after, self.quit)
        stdio.StandardIO(_Commands(self))
        try:
            # All at once: each waits for the network, not for the others.
            await gatherResults([ensureDeferred(i.start()) for i in self.instances])
        except Exception as e:
            emit("error", message=f"starting failed: {e}")
            self.quit()
        else:
            if self.options.connect is not None:
                ensureDeferred(self.connect_all(self.options.connect, auto=True))
        await self.finished
        for instance in self.instances:
            await instance.service.stopService()
        emit("bye")

    async def connect_all(self, peer: str, auto: bool = False) -> None:
        connected = failed = 0
        for instance in self.instances:
            if await instance.connect(self.peer_name(peer, instance.index)):
                connected += 1
            else:
                failed += 1
            if self.options.trial_gap:
                await task.deferLater(self.reactor, self.options.trial_gap)
        emit("done", connected=connected, failed=failed)
        if auto and self.options.exit_when_done:
            self.reactor.callLater(self.options.linger, self.quit)

    def quit(self) -> None:
        if not self.finished.called:
            self.finished.callback(None)

    def command(self, line: str) -> None:
        words = line.split()
        if not words:
            return
        targets = self.instances
        if words[0].startswith("@"):
            try:
                targets = [self.instances[int(words[0][1:]) - 1]]
            except (ValueError, IndexError):
                emit("error", message=f"no instance {words[0]}")
                return
            words = words[1:]
        try:
            self._carry_out(words, targets)
        except (ValueError, IndexError) as e:
            emit("error", message=f"bad command {line!r}: {e}")
        except Exception as e:
            # Reported where the test reads, not only in a log it may not see.
            emit("error", message=f"command {line!r} failed: {e!r}")
            raise

    def _carry_out(self, words: Sequence[str], targets: list[Instance]) -> None:
        verb, arguments = words[0], words[1:]
        first = targets[0]
        if verb == "connect":
            ensureDeferred(first.connect(arguments[0]))
        elif verb == "connect-all":
            ensureDeferred(self.connect_all(arguments[0]))
        elif verb == "send":
            first.send(arguments[0], int(arguments[1]))
        elif verb == "stream":
            burst = int(arguments[3]) if len(arguments) > 3 else 1
            first.stream(arguments[0], float(arguments[1]), float(arguments[2]), burst)
        elif verb == "status":
            for instance in targets:
                instance.status()
        elif verb == "close":
            first.service.close(arguments[0])
        elif verb == "quit":
            self.quit()
        else:
            raise ValueError(f"unknown command {verb!r}")


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.support.peer_runner",
        description="A NAT traversal peer for the NAT lab, reporting events as JSON lines.",
    )
    parser.add_argument("--name", required=True, help="the name to register")
    parser.add_argument(
        "--rendezvous",
        action="append",
        required=True,
        help="client endpoint string of a rendezvous node (repeatable: failover in this order)",
    )
    parser.add_argument(
        "--interface",
        metavar="ADDRESS",
        help="bind to ADDRESS and offer it as the only host address",
    )
    parser.add_argument(
        "--stun", action="append", default=[], help="HOST[:PORT] of a STUN server (repeatable)"
    )
    parser.add_argument("--instances", type=int, default=1, help="services (sockets) to run")
    parser.add_argument("--connect", metavar="PEER", help="connect to PEER once ready")
    parser.add_argument(
        "--wait-for-peer",
        type=float,
        default=10.0,
        metavar="S",
        help="keep offering while the peer is not registered, up to S seconds",
    )
    parser.add_argument(
        "--trial-gap", type=float, default=0.1, metavar="S", help="pause between connect-all trials"
    )
    parser.add_argument(
        "--keepalive-interval", type=float, default=25.0, metavar="S", help="between KEEP_ALIVEs"
    )
    parser.add_argument(
        "--keepalive-timeout", type=float, default=5.0, metavar="S", help="wait for an answer"
    )
    parser.add_argument("--no-keepalive", action="store_true", help="no keep-alive at all")
    parser.add_argument(
        "--no-liveness-checks",
        action="store_true",
        help="find a broken path by keep-alive alone, as before liveness checks",
    )
    parser.add_argument(
        "--punch-timeout", type=float, default=10.0, metavar="S", help="give a punch up after S"
    )
    parser.add_argument("--echo", action="store_true", help="echo numbered datagrams back")
    parser.add_argument("--send-every", type=float, metavar="S", help="stream to each new peer")
    parser.add_argument(
        "--duration", type=float, default=10.0, metavar="S", help="how long --send-every lasts"
    )
    parser.add_argument("--burst", type=int, default=1, help="datagrams per --send-every")
    parser.add_argument(
        "--payload-size", type=int, default=64, metavar="BYTES", help="of each datagram sent"
    )
    parser.add_argument("--no-detect", action="store_true", help="skip NAT behaviour discovery")
    parser.add_argument("--exit-when-done", action="store_true", help="exit after --connect")
    parser.add_argument(
        "--linger",
        type=float,
        default=1.0,
        metavar="S",
        help="with --exit-when-done: stay S seconds to answer late PUNCHes",
    )
    parser.add_argument("--exit-after", type=float, metavar="S", help="exit after S seconds")
    parser.add_argument("--verbose", action="store_true", help="log at info level to stderr")
    parser.add_argument(
        "--turn", action="append", default=[], metavar="URI", help="a TURN server (repeatable)"
    )
    parser.add_argument(
        "--port-mapping",
        default="off",
        choices=[mode.value for mode in Mode],
        help="map the socket's port on the default gateway (default off)",
    )
    parser.add_argument(
        "--port-mapping-lease", type=int, default=7200, metavar="S", help="lease asked for"
    )
    parser.add_argument("--turn-user", default="", help="the TURN servers' user name")
    parser.add_argument("--turn-password", default="", help="the TURN servers' password")
    options = parser.parse_args(argv)
    options.stun = [parse_hostport(server, 3478) for server in options.stun]
    options.turn = [
        parse_turn_uri(uri, options.turn_user, options.turn_password) for uri in options.turn
    ]
    if options.instances < 1:
        parser.error("--instances must be at least 1")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_arguments(argv)
    level = LogLevel.info if options.verbose else LogLevel.warn
    observer = FilteringLogObserver(
        textFileLogObserver(sys.stderr), [LogLevelFilterPredicate(defaultLogLevel=level)]
    )
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)

    def run(reactor: Any) -> Deferred[None]:
        return ensureDeferred(Runner(reactor, options).run())

    task.react(run)
    return 0


# --- the test's side: a peer process and its events ----------------------------------


class PeerProcess:
    """
    A running C{peer_runner}, seen from the test: its events as they
    arrive (a thread reads its stdout), and its stdin for commands.

    @ivar label: what failure messages call it.
    @ivar events: every event so far, in order.
    """

    def __init__(self, process: subprocess.Popen[str], label: str) -> None:
        self.process = process
        self.label = label
        self.events: list[dict[str, Any]] = []
        self._arrived: queue.Queue[None] = queue.Queue()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, args=(process.stdout,), daemon=True)
        self._reader.start()

    @classmethod
    def spawn(
        cls,
        lab: Any,
        namespace: str,
        arguments: Sequence[str],
        label: str | None = None,
        stderr: IO[Any] | int | None = None,
    ) -> PeerProcess:
        """Start a peer in C{namespace} of C{lab} (a L{tests.support.natlab.Lab})."""
        argv = [sys.executable, "-m", "tests.support.peer_runner", *arguments]
        process = lab.spawn(namespace, argv, stdin=subprocess.PIPE, stderr=stderr)
        return cls(process, label or namespace)

    def _read(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "stdout", "line": line.rstrip("\n")}
            with self._lock:
                self.events.append(event)
            self._arrived.put(None)
        self._arrived.put(None)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.events)

    def of(self, what: str, **match: Any) -> list[dict[str, Any]]:
        """The events called C{what} so far whose fields equal C{match}."""
        return [
            event
            for event in self.snapshot()
            if event.get("event") == what and all(event.get(k) == v for k, v in match.items())
        ]

    def wait_for(
        self,
        what: str,
        count: int = 1,
        timeout: float = 30.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
        **match: Any,
    ) -> list[dict[str, Any]]:
        """
        Wait until C{count} events called C{what} (matching C{match} and
        C{where}) have arrived; return them.  A timeout, or the process
        ending first, raises C{AssertionError} with the recent events,
        which is what a failing lab test has to show.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.of(what, **match) if where is None or where(e)]
            if len(found) >= count:
                return found[:count]
            exited = self.process.poll() is not None and not self._reader.is_alive()
            left = deadline - time.monotonic()
            if left <= 0 or exited:
                why = "exited" if exited else f"no {count} {what!r} events in {timeout:g} s"
                recent = "\n".join(json.dumps(e) for e in self.snapshot()[-15:])
                raise AssertionError(f"{self.label}: {why}; last events:\n{recent}")
            with suppress(queue.Empty):
                self._arrived.get(timeout=min(left, 0.5))

    def command(self, line: str) -> None:
        """Send one command line (see the module docstring)."""
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def status(self, instance: int = 1, timeout: float = 10.0) -> dict[str, Any]:
        """Ask for and return a fresh C{status} event of one instance."""
        before = len(self.of("status", instance=instance))
        self.command(f"@{instance} status")
        return self.wait_for("status", before + 1, timeout, instance=instance)[-1]

    def stop(self, timeout: float = 5.0) -> None:
        """Ask it to quit; terminate it if it does not."""
        if self.process.poll() is None:
            try:
                self.command("quit")
                self.process.wait(timeout=timeout)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self.process.terminate()
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
        self._reader.join(timeout=timeout)


if __name__ == "__main__":
    sys.exit(main())
