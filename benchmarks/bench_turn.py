"""
Relayed traffic through coturn: our TURN client against aioice's, on the same
coturn in the same run, on loopback.

    python -m benchmarks.bench_turn [--rounds 3] [--pings 1000] [--seconds 3] [--json PATH]

One coturn (TURN mode, one relay thread) and one peer process serve the whole
run.  Each client runs alone in a child process of its own, ours on the
Twisted reactor and aioice on asyncio, so the two never share a process or
compete for CPU; the rounds alternate which goes first.  Inside a child the
same measurement code drives both clients through two functions, "send
through the relay" and "send straight to the peer", so the two sides differ
only in the client under test.  Measured:

  - allocation time: from opening the socket to knowing the relayed address
    (the 401 challenge and the signed Allocate), median of several;
  - round-trip time of small datagrams, client -> coturn -> echoing peer ->
    coturn -> client, one at a time, against the same peer reached directly
    from the same event loop; the difference is what the relay and the
    client's TURN code add.  Both clients use a bound channel (ChannelData):
    ours binds it explicitly, aioice binds it on its first send.  The main
    figures are taken with the client, coturn and the peer on one core (see
    L{_pin}); the same pings with the processes free are reported too;
  - throughput of 1000-byte payloads through the relay, in both directions:
    the receiver acknowledges every few datagrams straight over loopback (not
    through the relay) and the sender keeps a fixed window unacknowledged, so
    the rate is the most the path carries without flooding a socket buffer;
    lost datagrams are counted.  Beside the rates: the client's CPU time per
    datagram (C{getrusage}) and the share of a core that the client, coturn
    and the peer each used (C{/proc}), which tell whether the client set the
    rate or was waiting for the others.

Every figure is reported with the ratio ours / aioice (lower is better for
times and CPU, higher for rates).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import platform
import resource
import select
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

REPO = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
USERNAME, PASSWORD, REALM = "bench", "bench-password", "bench.test"

Address = tuple[str, int]
Result = dict[str, Any]

# The peer's wire protocol: the first byte says what a datagram is.
ECHO = b"E"  # sent back to whoever sent it
DATA = b"D"  # counted (throughput)
ACK = b"A"  # cumulative count of DATA received, from the receiving end
FORWARD = b"F"  # start counting DATA, acknowledging to the sender of this
FORWARD_OK = b"f"
QUERY = b"Q"  # how many DATA arrived, first and last arrival
QUERY_ANSWER = b"q"
REVERSE = b"R"  # send DATA to the given address for a while
REVERSE_OK = b"r"
REVERSE_DONE = b"Z"  # how many DATA were sent

_RUN = struct.Struct("!I")
_COUNT = struct.Struct("!Q")
_FORWARD = struct.Struct("!II")  # run id, acknowledge every
_QUERY_ANSWER = struct.Struct("!IQdd")  # run id, received, first, last (monotonic)
_REVERSE = struct.Struct("!IdIId")  # run id, seconds, window, size, stall
_REVERSE_DONE = struct.Struct("!IQ")  # run id, sent

PEER_RECEIVE_BUFFER = 4 * 1024 * 1024
"""The peer is the instrument, not the subject: room enough that loss never happens there."""


def _now() -> float:
    return time.perf_counter()


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _process_cpu(pid: int) -> float:
    """User + system seconds of another process, or 0 where /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


class Snapshot:
    """
    CPU of the client, coturn and the peer at one moment, with how many
    datagrams had gone by: the three share the machine's cores, so a rate
    alone does not say which of them set it.
    """

    def __init__(self, watched: dict[str, int], count: int) -> None:
        self.wall = _now()
        self.count = count
        self.cpu = {"client": _cpu()}
        self.cpu.update((name, _process_cpu(pid)) for name, pid in watched.items())


def _usage(first: Snapshot, last: Snapshot) -> Result:
    wall = max(last.wall - first.wall, 1e-9)
    handled = max(last.count - first.count, 1)
    used = {name: last.cpu[name] - first.cpu[name] for name in first.cpu}
    return {
        "client_cpu_us_per_datagram": used["client"] / handled * 1e6,
        **{f"{name}_cpu_share": seconds / wall for name, seconds in used.items()},
    }


def _address(text: str) -> Address:
    host, _, port = text.rpartition(":")
    return (host, int(port))


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


# --- the peer process ---------------------------------------------------------------


def serve_peer() -> int:
    """
    Echo, count and send on one blocking socket until killed.

    Plain stdlib on purpose: the peer must cost the same whichever client is
    measured, and must not be a TURN implementation of either side.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, PEER_RECEIVE_BUFFER)
    sock.bind((LOOPBACK, 0))
    print(sock.getsockname()[1], flush=True)
    run, every, received = -1, 1, 0
    first = last = 0.0
    ack_to: Address | None = None
    finished: set[int] = set()
    while True:
        data, addr = sock.recvfrom(65536)
        kind = data[:1]
        if kind == DATA:
            now = time.monotonic()
            if received == 0:
                first = now
            last = now
            received += 1
            if received % every == 0 and ack_to is not None:
                sock.sendto(ACK + _COUNT.pack(received), ack_to)
        elif kind == ECHO:
            sock.sendto(data, addr)
        elif kind == FORWARD:
            new_run, every = _FORWARD.unpack_from(data, 1)
            if new_run != run:
                run, received, ack_to = new_run, 0, addr
            sock.sendto(FORWARD_OK + _RUN.pack(run), addr)
        elif kind == QUERY:
            sock.sendto(QUERY_ANSWER + _QUERY_ANSWER.pack(run, received, first, last), addr)
        elif kind == REVERSE:
            reverse_run = _RUN.unpack_from(data, 1)[0]
            sock.sendto(REVERSE_OK + _RUN.pack(reverse_run), addr)
            if reverse_run in finished:
                continue  # a retransmitted command for a run already done
            finished.add(reverse_run)
            _, seconds, window, size, stall = _REVERSE.unpack_from(data, 1)
            destination = _address(data[1 + _REVERSE.size :].decode())
            sent = _send_windowed(sock, destination, seconds, window, size, stall)
            for _ in range(3):  # the client waits for one of them
                sock.sendto(REVERSE_DONE + _REVERSE_DONE.pack(reverse_run, sent), addr)


def _send_windowed(
    sock: socket.socket, destination: Address, seconds: float, window: int, size: int, stall: float
) -> int:
    """
    Send DATA to C{destination} for C{seconds}, at most C{window} unacknowledged.

    Outstanding datagrams count as lost once no acknowledgement came for
    C{stall} seconds, so one lost datagram cannot close the window for good.
    """
    payload = DATA + bytes(size - 1)
    sent = acked = written_off = 0
    sock.setblocking(False)
    end = time.monotonic() + seconds
    progress = time.monotonic()
    try:
        while (now := time.monotonic()) < end:
            while sent - acked - written_off < window:
                try:
                    sock.sendto(payload, destination)
                except BlockingIOError:
                    break
                sent += 1
            readable, _, _ = select.select([sock], [], [], stall)
            if readable:
                acked, progress = _drain_acks(sock, acked, progress)
            elif now - progress > stall:
                written_off = sent - acked
                progress = now
        time.sleep(0.2)  # let the last acknowledgements arrive and be thrown away
        _drain_acks(sock, acked, progress)
    finally:
        sock.setblocking(True)
    return sent


def _drain_acks(sock: socket.socket, acked: int, progress: float) -> tuple[int, float]:
    while True:
        try:
            data, _ = sock.recvfrom(65536)
        except BlockingIOError:
            return acked, progress
        if data[:1] == ACK:
            count = _COUNT.unpack_from(data, 1)[0]
            if count > acked:
                acked, progress = count, time.monotonic()


@contextmanager
def running_peer() -> Iterator[tuple[Address, int]]:
    """The peer process on a free loopback port, stopped afterwards: (address, pid)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.bench_turn", "--serve-peer"],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        yield (LOOPBACK, int(process.stdout.readline())), process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


# --- measurements, shared by both clients ---------------------------------------------


class Timer(Protocol):
    def cancel(self) -> None: ...


class Link:
    """
    What a measurement needs from a client: a way through the relay and a
    way straight to the peer, both in the client's own event loop.
    """

    def __init__(
        self,
        send_relayed: Callable[[bytes], object],
        send_direct: Callable[[bytes], object],
        call_later: Callable[[float, Callable[[], None]], Timer],
    ) -> None:
        self.send_relayed = send_relayed
        self.send_direct = send_direct
        self.call_later = call_later


class Phase:
    """One measurement; the client feeds it what arrives on either path."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self._done: Callable[[Result], object] | None = None
        self._timer: Timer | None = None

    def start(self, done: Callable[[Result], object]) -> None:
        self._done = done
        self.begin()

    def begin(self) -> None:
        pass

    def relayed(self, data: bytes) -> None:
        pass

    def direct(self, data: bytes) -> None:
        pass

    def every(self, interval: float, check: Callable[[], None]) -> None:
        """Call C{check} every C{interval} seconds until L{finish}."""

        def tick() -> None:
            self._timer = self.link.call_later(interval, tick)
            check()

        self._timer = self.link.call_later(interval, tick)

    def finish(self, result: Result) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        done, self._done = self._done, None
        if done is not None:
            done(result)


class Pings(Phase):
    """Sequential echoes on one path: each ping leaves when the last came back."""

    def __init__(self, link: Link, relayed: bool, count: int, size: int) -> None:
        super().__init__(link)
        self._send = link.send_relayed if relayed else link.send_direct
        self._count = count
        self._padding = bytes(size - 1 - _RUN.size)
        self._sequence = 0
        self._sent_at = 0.0
        self._rtts: list[float] = []
        self._lost = 0

    def begin(self) -> None:
        self.every(0.25, self._check)
        self._ping()

    def _ping(self) -> None:
        packet = ECHO + _RUN.pack(self._sequence) + self._padding
        self._sent_at = _now()
        self._send(packet)

    def relayed(self, data: bytes) -> None:
        arrived = _now()
        if data[:1] == ECHO and _RUN.unpack_from(data, 1)[0] == self._sequence:
            self._rtts.append(arrived - self._sent_at)
            self._next()

    direct = relayed

    def _check(self) -> None:
        if _now() - self._sent_at > 1.0:
            self._lost += 1
            self._next()

    def _next(self) -> None:
        self._sequence += 1
        if self._sequence < self._count:
            self._ping()
        else:
            self.finish({"rtts": self._rtts, "lost": self._lost})


class Forward(Phase):
    """Client -> relay -> peer, windowed on the peer's direct acknowledgements."""

    def __init__(self, link: Link, run: int, seconds: float, size: int, options: Any) -> None:
        super().__init__(link)
        self._run = run
        self._seconds = seconds
        self._payload = DATA + bytes(size - 1)
        self._window: int = options.window
        self._ack_every: int = options.ack_every
        self._stall: float = options.stall
        self._watched: dict[str, int] = options.watched
        self._sent = self._acked = self._written_off = 0
        self._state = "starting"
        self._end = self._progress = self._asked = 0.0
        self._first: Snapshot | None = None
        self._last: Snapshot | None = None

    def begin(self) -> None:
        self.every(0.01, self._check)
        self._ask()

    def _ask(self) -> None:
        self._asked = _now()
        if self._state == "starting":
            self.link.send_direct(FORWARD + _FORWARD.pack(self._run, self._ack_every))
        else:
            self.link.send_direct(QUERY)

    def _fill(self) -> None:
        send, payload = self.link.send_relayed, self._payload
        while self._sent - self._acked - self._written_off < self._window:
            send(payload)
            self._sent += 1

    def direct(self, data: bytes) -> None:
        kind = data[:1]
        if kind == ACK:
            count = _COUNT.unpack_from(data, 1)[0]
            if count > self._acked:
                self._acked, self._progress = count, _now()
                if self._state == "sending":
                    self._fill()
        elif kind == FORWARD_OK and self._state == "starting":
            if _RUN.unpack_from(data, 1)[0] == self._run:
                self._state = "sending"
                self._first = Snapshot(self._watched, self._sent)
                self._progress = _now()
                self._end = self._progress + self._seconds
                self._fill()
        elif kind == QUERY_ANSWER and self._state == "querying":
            run, received, first, last = _QUERY_ANSWER.unpack_from(data, 1)
            if run == self._run and self._first is not None and self._last is not None:
                usage = _usage(self._first, self._last)
                rates = _rates(self._sent, received, last - first, len(self._payload))
                self.finish(rates | usage)

    def _check(self) -> None:
        now = _now()
        if self._state == "starting" and now - self._asked > 0.2:
            self._ask()
        elif self._state == "sending":
            if now >= self._end:
                self._last = Snapshot(self._watched, self._sent)
                self._state = "draining"
            elif now - self._progress > self._stall:
                self._written_off = self._sent - self._acked
                self._progress = now
                self._fill()
        elif self._state == "draining" and now - self._end > 0.3:
            self._state = "querying"
            self._ask()
        elif self._state == "querying" and now - self._asked > 0.2:
            self._ask()


class Reverse(Phase):
    """Peer -> relay -> client: the peer sends, the client acknowledges directly."""

    def __init__(
        self, link: Link, run: int, seconds: float, size: int, relayed: Address, options: Any
    ) -> None:
        super().__init__(link)
        self._command = (
            REVERSE
            + _REVERSE.pack(run, seconds, options.reverse_window, size, options.stall)
            + f"{relayed[0]}:{relayed[1]}".encode()
        )
        self._run = run
        self._size = size
        self._ack_every: int = options.reverse_ack_every
        self._watched: dict[str, int] = options.watched
        self._received = 0
        self._first = self._last = self._asked = 0.0
        self._state = "starting"
        self._snapshots: list[Snapshot] = []

    def begin(self) -> None:
        self.every(0.1, self._check)
        self._ask()

    def _ask(self) -> None:
        self._asked = _now()
        self.link.send_direct(self._command)

    def relayed(self, data: bytes) -> None:
        if data[:1] != DATA:
            return
        now = _now()
        if self._received == 0:
            self._first = now
        self._last = now
        self._received += 1
        if self._received % self._ack_every == 0:
            self.link.send_direct(ACK + _COUNT.pack(self._received))

    def direct(self, data: bytes) -> None:
        kind = data[:1]
        if kind == REVERSE_OK and self._state == "starting":
            self._state = "receiving"
            self._snapshots.append(Snapshot(self._watched, self._received))
        elif kind == REVERSE_DONE:
            run, sent = _REVERSE_DONE.unpack_from(data, 1)
            if run == self._run and self._state != "done" and len(self._snapshots) > 1:
                self._state = "done"
                usage = _usage(self._snapshots[0], self._snapshots[-1])
                rates = _rates(sent, self._received, self._last - self._first, self._size)
                self.finish(rates | usage)

    def _check(self) -> None:
        """Sample CPU while data still arrives, so the idle tail does not dilute it."""
        if self._state == "starting" and _now() - self._asked > 0.2:
            self._ask()
        elif self._state == "receiving" and self._received > self._snapshots[-1].count:
            self._snapshots.append(Snapshot(self._watched, self._received))


def _rates(sent: int, received: int, seconds: float, size: int) -> Result:
    """Rates over the receiving end's span from first to last arrival."""
    seconds = max(seconds, 1e-9)
    return {
        "sent": sent,
        "received": received,
        "loss": 1 - received / sent if sent else 0.0,
        "seconds": seconds,
        "datagrams_per_s": received / seconds,
        "payload_mbit_s": received * size * 8 / seconds / 1e6,
    }


async def measure(
    link: Link,
    run: Callable[[Phase], Awaitable[Result]],
    relayed_address: Address,
    options: Any,
) -> Result:
    """Everything after the allocation, identical for both clients."""
    await run(Pings(link, True, options.warmup, options.ping_size))
    await run(Pings(link, False, options.warmup, options.ping_size))
    result: Result = {}
    for placement in ("one_core", "free"):
        restore = _pin(options.watched.values()) if placement == "one_core" else {}
        try:
            relayed, direct = await _interleaved_pings(link, run, options)
        finally:
            _unpin(restore)
        result[placement] = {
            "ping_relayed": relayed,
            "ping_direct": direct,
            "added_latency_p50_ms": relayed["p50_ms"] - direct["p50_ms"],
            "added_latency_p95_ms": relayed["p95_ms"] - direct["p95_ms"],
        }
    result.update(result.pop("one_core"))
    base = os.getpid() << 4
    result["forward"] = await run(
        Forward(link, base + 1, options.seconds, options.payload, options)
    )
    result["reverse"] = await run(
        Reverse(link, base + 2, options.seconds, options.payload, relayed_address, options)
    )
    return result


async def _interleaved_pings(
    link: Link, run: Callable[[Phase], Awaitable[Result]], options: Any
) -> tuple[Result, Result]:
    """Relayed and direct pings in alternating blocks, so that drift hits both alike."""
    blocks = 4
    relayed: Result = {"rtts": [], "lost": 0}
    direct: Result = {"rtts": [], "lost": 0}
    for _ in range(blocks):
        for through_relay, total in ((True, relayed), (False, direct)):
            part = await run(Pings(link, through_relay, options.pings // blocks, options.ping_size))
            total["rtts"] += part["rtts"]
            total["lost"] += part["lost"]
    return _summary(relayed), _summary(direct)


def _threads(pid: int) -> list[int]:
    try:
        return [int(tid) for tid in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]


def _pin(pids: Iterable[int]) -> dict[int, set[int]]:
    """
    Put this process, coturn (every thread) and the peer on one core.

    A ping wakes each process in turn.  Left free, each wake-up lands on
    whichever core the scheduler picks, and waking an idle core of a virtual
    machine costs tens of microseconds that come and go between runs, more
    than the whole difference measured here.  On one core every hop is a
    plain context switch, and the round trip is the CPU work along the path.
    """
    if not hasattr(os, "sched_setaffinity"):
        return {}
    core = {max(os.sched_getaffinity(0))}
    previous: dict[int, set[int]] = {}
    for tid in [0, *(tid for pid in pids for tid in _threads(pid))]:
        try:
            previous[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, core)
        except OSError:
            continue
    return previous


def _unpin(previous: dict[int, set[int]]) -> None:
    for tid, cpus in previous.items():
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:
            continue


def _summary(pings: Result) -> Result:
    rtts: list[float] = pings["rtts"]
    return {
        "count": len(rtts),
        "lost": pings["lost"],
        "p50_ms": statistics.median(rtts) * 1e3,
        "p95_ms": _percentile(rtts, 0.95) * 1e3,
        "mean_ms": statistics.fmean(rtts) * 1e3,
    }


class Dispatch:
    """
    Where the client's callbacks deliver: to the current phase, so that
    neither client's glue code knows what is being measured.
    """

    def __init__(self) -> None:
        self.phase: Phase | None = None

    def relayed(self, data: bytes) -> None:
        if self.phase is not None:
            self.phase.relayed(data)

    def direct(self, data: bytes) -> None:
        if self.phase is not None:
            self.phase.direct(data)


# --- ours, on the Twisted reactor -----------------------------------------------------


def run_ours(options: Any) -> Result:
    """Measure our client; the reactor runs in this process only."""
    from twisted.internet import reactor as global_reactor
    from twisted.internet.defer import Deferred

    reactor: Any = global_reactor
    outcome: Result = {}

    async def main() -> None:
        try:
            outcome.update(await _ours(reactor, options))
        except BaseException as e:
            outcome["error"] = repr(e)
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main()))
    reactor.run()
    return outcome


async def _ours(reactor: Any, options: Any) -> Result:
    from twisted.internet import defer
    from twisted.internet.protocol import DatagramProtocol

    from twisted_nat.mux import UDPMultiplexer
    from twisted_nat.turn import TURNClient

    server, peer = _address(options.coturn), _address(options.peer)
    dispatch = Dispatch()

    class Direct(DatagramProtocol):
        def datagramReceived(self, datagram: bytes, addr: Address) -> None:
            dispatch.direct(datagram)

    def open_client() -> tuple[Any, TURNClient]:
        mux = UDPMultiplexer()
        port = reactor.listenUDP(0, mux, interface=LOOPBACK)
        return port, TURNClient.on_multiplexer(mux, reactor)

    allocation_times = []
    for _ in range(options.allocations):
        started = _now()
        port, client = open_client()
        await client.allocate(server, options.user, options.password)
        allocation_times.append(_now() - started)
        await client.close()
        await defer.maybeDeferred(port.stopListening)

    port, client = open_client()
    allocation = await client.allocate(
        server, options.user, options.password, receiver=lambda data, _: dispatch.relayed(data)
    )
    await allocation.bind_channel(peer)
    direct_port = reactor.listenUDP(0, Direct(), interface=LOOPBACK)

    def run(phase: Phase) -> Awaitable[Result]:
        done: defer.Deferred[Result] = defer.Deferred()
        dispatch.phase = phase
        phase.start(done.callback)
        return done

    link = Link(
        lambda data: allocation.send(data, peer),
        lambda data: direct_port.write(data, peer),
        reactor.callLater,
    )
    result = await measure(link, run, allocation.relayed_address, options)
    dispatch.phase = None
    stats = client.stats
    result.update(
        client="twisted-nat",
        allocation_ms=[t * 1e3 for t in allocation_times],
        path="ChannelData" if stats.sent_indications == 0 else "Send/Data indications",
        turn_stats={
            "sent_channel_data": stats.sent_channel_data,
            "sent_indications": stats.sent_indications,
            "received_channel_data": stats.received_channel_data,
            "received_indications": stats.received_indications,
            "dropped": stats.dropped_malformed
            + stats.dropped_unknown_server
            + stats.dropped_unknown_channel,
        },
    )
    await client.close()
    await defer.maybeDeferred(port.stopListening)
    await defer.maybeDeferred(direct_port.stopListening)
    return result


# --- aioice, on asyncio ---------------------------------------------------------------


def run_aioice(options: Any) -> Result:
    """Measure aioice's client; the asyncio loop runs in this process only."""
    return asyncio.run(_aioice(options))


async def _aioice(options: Any) -> Result:
    from aioice.turn import create_turn_endpoint

    loop = asyncio.get_running_loop()
    server, peer = _address(options.coturn), _address(options.peer)
    dispatch = Dispatch()
    errors: list[str] = []

    class Relayed(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.lost: asyncio.Future[None] = loop.create_future()

        def datagram_received(self, data: bytes, addr: Address) -> None:
            dispatch.relayed(data)

        def error_received(self, exc: Exception) -> None:
            errors.append(repr(exc))

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.lost.done():
                self.lost.set_result(None)

    class Direct(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Address) -> None:
            dispatch.direct(data)

    allocation_times = []
    for _ in range(options.allocations):
        started = _now()
        transport, protocol = await create_turn_endpoint(
            Relayed, server, options.user, options.password
        )
        allocation_times.append(_now() - started)
        transport.close()
        await protocol.lost

    transport, protocol = await create_turn_endpoint(
        Relayed, server, options.user, options.password
    )
    relayed_address = transport.get_extra_info("sockname")
    direct, _ = await loop.create_datagram_endpoint(Direct, local_addr=(LOOPBACK, 0))

    def run(phase: Phase) -> Awaitable[Result]:
        done: asyncio.Future[Result] = loop.create_future()
        dispatch.phase = phase
        phase.start(done.set_result)
        return done

    link = Link(
        lambda data: transport.sendto(data, peer),
        lambda data: direct.sendto(data, peer),
        loop.call_later,
    )
    result = await measure(link, run, relayed_address, options)
    dispatch.phase = None
    inner = getattr(transport, "_TurnTransport__inner_protocol", None)
    channels = getattr(inner, "peer_to_channel", {})
    result.update(
        client=f"aioice {importlib.metadata.version('aioice')}",
        allocation_ms=[t * 1e3 for t in allocation_times],
        path="ChannelData" if peer in channels else "unknown",
        errors=errors[:10],
        error_count=len(errors),
    )
    transport.close()
    await protocol.lost
    direct.close()
    return result


# --- the parent: coturn, the peer, the rounds -----------------------------------------

FIGURES: list[tuple[str, str, Callable[[Result], float]]] = [
    ("allocation, median", "ms", lambda r: statistics.median(r["allocation_ms"])),
    ("RTT relayed p50", "ms", lambda r: r["ping_relayed"]["p50_ms"]),
    ("RTT relayed p95", "ms", lambda r: r["ping_relayed"]["p95_ms"]),
    ("RTT direct p50", "ms", lambda r: r["ping_direct"]["p50_ms"]),
    ("RTT direct p95", "ms", lambda r: r["ping_direct"]["p95_ms"]),
    ("added latency p50", "ms", lambda r: r["added_latency_p50_ms"]),
    ("added latency p95", "ms", lambda r: r["added_latency_p95_ms"]),
    ("free cores: RTT relayed p50", "ms", lambda r: r["free"]["ping_relayed"]["p50_ms"]),
    ("free cores: RTT direct p50", "ms", lambda r: r["free"]["ping_direct"]["p50_ms"]),
    ("free cores: added p50", "ms", lambda r: r["free"]["added_latency_p50_ms"]),
    ("to peer, datagrams/s", "/s", lambda r: r["forward"]["datagrams_per_s"]),
    ("to peer, payload", "Mbit/s", lambda r: r["forward"]["payload_mbit_s"]),
    ("to peer, loss", "%", lambda r: r["forward"]["loss"] * 100),
    ("to peer, client CPU", "us/dgram", lambda r: r["forward"]["client_cpu_us_per_datagram"]),
    ("to peer, client CPU share", "cores", lambda r: r["forward"]["client_cpu_share"]),
    ("to peer, coturn CPU share", "cores", lambda r: r["forward"]["coturn_cpu_share"]),
    ("to peer, peer CPU share", "cores", lambda r: r["forward"]["peer_cpu_share"]),
    ("from peer, datagrams/s", "/s", lambda r: r["reverse"]["datagrams_per_s"]),
    ("from peer, payload", "Mbit/s", lambda r: r["reverse"]["payload_mbit_s"]),
    ("from peer, loss", "%", lambda r: r["reverse"]["loss"] * 100),
    ("from peer, client CPU", "us/dgram", lambda r: r["reverse"]["client_cpu_us_per_datagram"]),
    ("from peer, client CPU share", "cores", lambda r: r["reverse"]["client_cpu_share"]),
    ("from peer, coturn CPU share", "cores", lambda r: r["reverse"]["coturn_cpu_share"]),
    ("from peer, peer CPU share", "cores", lambda r: r["reverse"]["peer_cpu_share"]),
]


_MEASUREMENT_SETTINGS = (
    "rounds",
    "pings",
    "warmup",
    "ping_size",
    "payload",
    "seconds",
    "window",
    "ack_every",
    "reverse_window",
    "reverse_ack_every",
    "stall",
    "allocations",
)


def _child_arguments(options: Any) -> list[str]:
    return [
        f"--{name.replace('_', '-')}={getattr(options, name)}"
        for name in _MEASUREMENT_SETTINGS
        if name != "rounds"
    ]


def run_child(
    client: str, coturn: Address, peer: Address, watched: dict[str, int], options: Any
) -> Result:
    """One client's whole measurement, in a fresh interpreter."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_turn",
            "--client",
            client,
            "--coturn",
            f"{coturn[0]}:{coturn[1]}",
            "--peer",
            f"{peer[0]}:{peer[1]}",
            "--user",
            USERNAME,
            "--password",
            PASSWORD,
            "--watch",
            ",".join(f"{name}={pid}" for name, pid in watched.items()),
            *_child_arguments(options),
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = completed.stdout.strip().splitlines()
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"{client} failed ({completed.returncode}):\n{completed.stderr}")
    result: Result = json.loads(lines[-1])
    if "error" in result:
        raise RuntimeError(f"{client} failed: {result['error']}\n{completed.stderr}")
    return result


def _format(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}"


def run_parent(options: Any) -> int:
    from tests.support.coturn import CoturnMode, require_tool, running_coturn

    require_tool("turnserver")
    rounds: list[dict[str, Result]] = []
    with (
        running_coturn(
            CoturnMode.TURN, relay_threads=1, username=USERNAME, password=PASSWORD, realm=REALM
        ) as coturn,
        running_peer() as (peer, peer_pid),
    ):
        watched = {"coturn": coturn.pid, "peer": peer_pid}
        for number in range(options.rounds):
            order = ["ours", "aioice"] if number % 2 == 0 else ["aioice", "ours"]
            results = {
                client: run_child(client, coturn.address, peer, watched, options)
                for client in order
            }
            rounds.append(results)
            print(f"round {number + 1}: " + ", ".join(_round_line(results)), flush=True)

    summary = []
    print(
        f"\n{'median of ' + str(options.rounds) + ' rounds':<30} {'ours':>10} {'aioice':>10} "
        f"{'ours/aioice':>12}"
    )
    for name, unit, figure in FIGURES:
        ours = statistics.median(figure(r["ours"]) for r in rounds)
        theirs = statistics.median(figure(r["aioice"]) for r in rounds)
        ratio = ours / theirs if theirs else None
        summary.append(
            {"figure": name, "unit": unit, "ours": ours, "aioice": theirs, "ratio": ratio}
        )
        shown = f"{ratio:.2f}x" if ratio is not None else "-"
        print(
            f"{name + ' (' + unit + ')':<30} {_format(ours):>10} {_format(theirs):>10} {shown:>12}"
        )
    paths = {r[c]["path"] for r in rounds for c in ("ours", "aioice")}
    print(f"relayed path: {', '.join(sorted(paths))}")
    if options.json:
        document = {
            "benchmark": "TURN over UDP through coturn: twisted-nat against aioice",
            "python": platform.python_version(),
            "aioice": importlib.metadata.version("aioice"),
            "twisted": importlib.metadata.version("twisted"),
            "settings": {
                name: value
                for name, value in vars(options).items()
                if name in _MEASUREMENT_SETTINGS
            },
            "summary": summary,
            "rounds": rounds,
        }
        Path(options.json).write_text(json.dumps(document, indent=2) + "\n")
    return 0


def _round_line(results: dict[str, Result]) -> Iterator[str]:
    for client in ("ours", "aioice"):
        r = results[client]
        yield (
            f"{client} added {r['added_latency_p50_ms']:.3f} ms, "
            f"{r['forward']['datagrams_per_s']:,.0f}/s up, "
            f"{r['reverse']['datagrams_per_s']:,.0f}/s down"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="each runs both clients")
    parser.add_argument("--pings", type=int, default=1000, help="round trips per path")
    parser.add_argument("--warmup", type=int, default=50, help="round trips not counted")
    parser.add_argument("--ping-size", type=int, default=100, help="bytes per ping")
    parser.add_argument("--payload", type=int, default=1000, help="bytes per data datagram")
    parser.add_argument("--seconds", type=float, default=3.0, help="per throughput direction")
    parser.add_argument(
        "--window", type=int, default=256, help="datagrams unacknowledged, to the peer"
    )
    parser.add_argument("--ack-every", type=int, default=32, help="datagrams per ack, to the peer")
    parser.add_argument(
        "--reverse-window",
        type=int,
        default=64,
        help="datagrams unacknowledged, to the client (whose socket buffer holds about 90)",
    )
    parser.add_argument(
        "--reverse-ack-every", type=int, default=8, help="datagrams per ack, to the client"
    )
    parser.add_argument("--stall", type=float, default=0.05, help="seconds before a write-off")
    parser.add_argument("--allocations", type=int, default=7, help="timed allocations")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--serve-peer", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--client", choices=["ours", "aioice"], help=argparse.SUPPRESS)
    parser.add_argument("--coturn", help=argparse.SUPPRESS)
    parser.add_argument("--peer", help=argparse.SUPPRESS)
    parser.add_argument("--user", help=argparse.SUPPRESS)
    parser.add_argument("--password", help=argparse.SUPPRESS)
    parser.add_argument("--watch", default="", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    options.watched = {
        name: int(pid)
        for name, _, pid in (item.partition("=") for item in options.watch.split(",") if item)
    }
    if options.serve_peer:
        return serve_peer()
    if options.client is not None:
        result = run_ours(options) if options.client == "ours" else run_aioice(options)
        print(json.dumps(result))
        return 1 if "error" in result else 0
    return run_parent(options)


if __name__ == "__main__":
    sys.exit(main())
