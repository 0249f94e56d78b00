"""
Ten thousand kept-alive peer connections in one process, on loopback.

    python -m benchmarks.bench_scale [--connections 10000] [--seconds 60] [--json PATH]

A node that serves many peers holds one L{PeerConnection} per peer, each
with its keep-alive machine probing every 25 s and its punch session kept
to answer late PUNCHes.  This benchmark builds that state with the real
reactor and real sockets and measures what it costs while nothing happens
but keep-alive: memory per connection and CPU.  Targets: under 4 KiB per
connection and under 5 % of one core.

Both ends of every session live in this process, so C{--connections
10000} makes 10,000 sessions and 20,000 connection ends, and everything is
reported per end and per session.  The application-data router finds a
connection by its peer's address, so one socket pair can carry only one
session: the two sides are grids of sockets, on 127.0.0.1 and 127.0.0.2
(100 each for 10,000 sessions), and every socket of one side has one
session with every socket of the other.  Each socket's puncher and router
therefore hold about 100 sessions.  The sockets exist before the baseline
is taken, so the memory figures are per-session state only.

Each end does what C{NATTraversalService._connected} does once its punch
succeeds: derive the session keys, make a L{PeerConnection}, keep it alive
with L{HolePuncher.maintain_binding} (25 s interval, 5 s timeout) and add
an errback.  The peer's candidates are new objects for every session, as
they would be decoded from each peer's offer.  The phases:

  1. C{tracemalloc}: C{--traced} sessions on sockets of their own are
     taken through phases 2 and 3 with tracing on, and two snapshots
     compared: exactly the Python allocations that stay, and where they
     were made.  Tracing slows allocation several times over, so this is
     done apart, first, while nothing else runs; the sample's keep-alive
     is then stopped.
  2. set-up: sessions punched C{--batch} at a time, timed on their own;
  3. first probes: each end's machine is restarted with a probe at once,
     spread evenly over one interval, so that the estimators hold samples
     as in steady state and the probes of the 20,000 ends are spread over
     the interval as independently made connections' would be (set-up
     makes them in bursts); with C{--data}, every end then also sends one
     application datagram, so that each holds the ChaCha20-Poly1305
     ciphers of both directions, as a connection carrying data does;
  4. memory: RSS difference from a baseline taken after the sockets were
     opened and a few warm-up sessions made, after C{gc.collect()};
     everything counts, the allocator's slack included;
  5. steady state: the process's CPU time (C{getrusage}, user + system)
     over C{--seconds} of wall time.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred
from twisted.internet.task import deferLater
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogBeginner,
    textFileLogObserver,
)
from twisted.python.failure import Failure

from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.connection import AppDataRouter, PeerConnection
from twisted_nat.control import SessionKeys
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.punch import HolePuncher, PunchResult

SIDE_A = "127.0.0.1"
SIDE_B = "127.0.0.2"
TARGET_CPU = 0.05
TARGET_BYTES = 4096
WARM_UP = 4
SETTLE = 1.0  # seconds for answers in flight to land

INCLUDED = (
    "per connection end: the PeerConnection (SessionKeys, replay window, peer name, the peer's"
    " candidate), the keep-alive machine (estimators, callbacks, the _KeepAlive entry, its"
    " Deferred with the owner's errback, its one timer), the punch session kept for late"
    " PUNCHes (PunchSession, PunchResult and its pair reports, the ids of the PUNCHes sent,"
    " _Running), and the entries in the puncher's and router's dicts; not the sockets and the"
    " protocols on them, nor the kernel's socket buffers"
)


@attrs.define(eq=False)
class Endpoint:
    """One socket with the protocols every peer has on it."""

    mux: UDPMultiplexer
    puncher: HolePuncher
    router: AppDataRouter
    port: Any
    candidates: list[Candidate]

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    def offered(self) -> list[Candidate]:
        """This socket's candidates as new objects, as a peer decoding an offer would have them."""
        return [
            Candidate(c.kind, c.host.encode().decode(), int(str(c.port)), c.priority)
            for c in self.candidates
        ]


def open_endpoint(reactor: Any, interface: str) -> Endpoint:
    """A socket on C{interface}, its multiplexer, hole puncher and application router."""
    mux = UDPMultiplexer()
    port = reactor.listenUDP(0, mux, interface=interface)
    puncher = HolePuncher(reactor=reactor)
    puncher.attach(mux)
    router = AppDataRouter()
    router.attach(mux)
    number = port.getHost().port
    return Endpoint(mux, puncher, router, port, [Candidate(CandidateType.HOST, interface, number)])


@attrs.define(eq=False)
class Grid:
    """
    Sockets on two addresses and room for the ends of C{count} sessions,
    one session per pair of sockets.
    """

    side_a: list[Endpoint]
    side_b: list[Endpoint]
    ends: list[PeerConnection | None]

    @classmethod
    def open(cls, reactor: Any, count: int) -> Grid:
        rows = math.isqrt(count - 1) + 1 if count > 1 else 1
        cols = -(-count // rows)
        side_a = [open_endpoint(reactor, SIDE_A) for _ in range(rows)]
        side_b = [open_endpoint(reactor, SIDE_B) for _ in range(cols)]
        return cls(side_a, side_b, [None] * (2 * count))

    @property
    def endpoints(self) -> list[Endpoint]:
        return [*self.side_a, *self.side_b]

    def pair(self, index: int) -> tuple[Endpoint, Endpoint]:
        """
        The sockets of session C{index}: a bijection from
        C{range(rows * cols)} to socket pairs in which consecutive sessions
        use different sockets on both sides, so that a batch spreads its
        datagrams over every socket rather than filling one socket's
        receive buffer.
        """
        rows, cols = len(self.side_a), len(self.side_b)
        row = index % rows
        return self.side_a[row], self.side_b[(index // rows + row) % cols]

    def connected(self) -> list[PeerConnection]:
        return [end for end in self.ends if end is not None]

    def stop_keepalive(self) -> None:
        """Stop keeping every session alive (its punch session and connection stay)."""
        for index in range(len(self.ends) // 2):
            ends = self.ends[2 * index : 2 * index + 2]
            for endpoint, end in zip(self.pair(index), ends, strict=True):
                if end is not None:
                    endpoint.puncher.stop_binding(end.session_id)


@attrs.define
class Tally:
    """What went wrong, counted rather than raised, so one failure does not hide the figures."""

    punch_failures: int = 0
    bindings_lost: int = 0
    first_error: str | None = None

    def punch_failed(self, failure: Failure) -> None:
        self.punch_failures += 1
        self.first_error = self.first_error or str(failure.value)

    def binding_lost(self, failure: Failure) -> None:
        self.bindings_lost += 1
        self.first_error = self.first_error or str(failure.value)


def open_session(
    grid: Grid, index: int, tally: Tally, interval: float, timeout: float
) -> Deferred[Any]:
    """Punch session C{index} of C{grid}; both ends then stay kept alive."""
    a, b = grid.pair(index)
    session_id, secret = os.urandom(16), os.urandom(32)

    def end(me: Endpoint, other: Endpoint, controlling: bool, where: int) -> Deferred[None]:
        punching = me.puncher.punch_hole(
            me.port_number,
            other.offered(),
            session_id,
            secret=secret,
            controlling=controlling,
            local_candidates=me.candidates,
        )

        def connected(result: PunchResult) -> None:
            # What NATTraversalService._connected does with a punch result.
            keys = SessionKeys.derive(session_id, secret, offerer=controlling)
            connection = PeerConnection(
                me.router,
                keys,
                result.remote,
                result.local_kind,
                result.rtt,
                result.elapsed,
                peer=f"peer-{where}",
            )
            grid.ends[where] = connection
            keeping = me.puncher.maintain_binding(
                connection, connection.remote_address, interval=interval, timeout=timeout
            )
            keeping.addErrback(tally.binding_lost)

        return punching.addCallbacks(connected, tally.punch_failed)

    return DeferredList(
        [end(a, b, True, 2 * index), end(b, a, False, 2 * index + 1)], consumeErrors=True
    )


async def punch_all(
    grid: Grid, count: int, batch: int, tally: Tally, interval: float, timeout: float
) -> None:
    """Punch C{count} sessions across C{grid}, C{batch} at a time."""
    for start in range(0, count, batch):
        await DeferredList(
            [
                open_session(grid, index, tally, interval, timeout)
                for index in range(start, min(count, start + batch))
            ]
        )


async def first_probes(reactor: Any, ends: Sequence[PeerConnection], spread: float) -> None:
    """
    Restart every end's machine with a probe at once, the ends spread
    evenly over C{spread} seconds, then wait for the last answers.
    """
    chunks = max(1, min(len(ends), int(spread * 20)))
    size = -(-len(ends) // chunks)
    for chunk in range(chunks):
        await deferLater(reactor, spread / chunks, lambda: None)
        for end in ends[chunk * size : (chunk + 1) * size]:
            if end.keepalive is not None:
                end.keepalive.restart(probe_now=True)
    await deferLater(reactor, SETTLE, lambda: None)


async def send_data(reactor: Any, ends: Sequence[PeerConnection], spread: float) -> None:
    """
    Every end sends one 100-byte datagram, the ends spread evenly over
    C{spread} seconds so that no socket buffer overflows, then wait for them
    to land.
    """
    chunks = max(1, min(len(ends), int(spread * 20)))
    size = -(-len(ends) // chunks)
    for chunk in range(chunks):
        await deferLater(reactor, spread / chunks, lambda: None)
        for end in ends[chunk * size : (chunk + 1) * size]:
            end.write(bytes(100))
    await deferLater(reactor, SETTLE, lambda: None)


def rss_bytes() -> int | None:
    """The resident set size now (not the peak that getrusage gives), where Linux says it."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def probes_sent(ends: Sequence[PeerConnection]) -> int:
    total = 0
    for end in ends:
        quality = end.quality()
        if quality is not None:
            total += quality.probes_sent
    return total


def quiet_logging() -> None:
    """
    Start logging as an application would, warnings and worse only.  Until
    logging begins, Twisted buffers every event (up to 65,536), which would
    be counted as per-connection memory here.
    """
    globalLogBeginner.beginLoggingTo(
        [
            FilteringLogObserver(
                textFileLogObserver(sys.stderr),
                [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)],
            )
        ],
        redirectStandardIO=False,
    )


async def measure(reactor: Any, args: argparse.Namespace) -> dict[str, Any]:
    count: int = args.connections
    interval: float = args.interval
    timeout = min(5.0, interval)
    say = args.say
    tally = Tally()

    grid = Grid.open(reactor, count)
    sample = Grid.open(reactor, args.traced) if args.traced else None
    say(f"opened {len(grid.side_a)} + {len(grid.side_b)} sockets on {SIDE_A} and {SIDE_B}")
    # First-use allocations (code objects, caches, interned strings) land
    # in the baseline, not in the per-connection figures.
    warm = Grid.open(reactor, WARM_UP)
    await punch_all(warm, WARM_UP, WARM_UP, tally, interval, timeout)
    await first_probes(reactor, warm.connected(), 0.1)

    traced = None
    if sample is not None:
        say(f"tracing the allocations of {args.traced} sessions")
        traced = await traced_sample(reactor, sample, args, tally, timeout)
        sample.stop_keepalive()

    gc.collect()
    rss_before = rss_bytes()
    objects_before = len(gc.get_objects())
    say(f"punching {count} sessions, {args.batch} at a time")
    cpu_start, wall_start = cpu_seconds(), time.perf_counter()
    await punch_all(grid, count, args.batch, tally, interval, timeout)
    setup_wall = time.perf_counter() - wall_start
    setup_cpu = cpu_seconds() - cpu_start
    ends = grid.connected()
    sessions = len(ends) // 2
    say(f"set up {sessions} sessions in {setup_wall:.1f} s; first probes over {interval:.0f} s")
    await first_probes(reactor, ends, interval)
    if args.data:
        say("every end sends one application datagram")
        await send_data(reactor, ends, 1.0)

    gc.collect()
    rss_after = rss_bytes()
    memory: dict[str, Any] = {
        "included": INCLUDED,
        "gc_objects_per_end": (len(gc.get_objects()) - objects_before) / len(ends),
    }
    if args.data:
        memory["data_delivered"] = sum(e.router.stats.delivered for e in grid.endpoints)
    if rss_before is not None and rss_after is not None:
        memory["rss"] = _sizes(rss_after - rss_before, len(ends))
    if traced is not None:
        memory["tracemalloc"] = traced

    say(f"steady state for {args.seconds:.0f} s")
    received_start = sum(e.puncher.stats.received for e in grid.endpoints)
    probes_start = probes_sent(ends)
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    cpu_start, wall_start = cpu_seconds(), time.perf_counter()
    await deferLater(reactor, args.seconds, lambda: None)
    wall = time.perf_counter() - wall_start
    cpu = cpu_seconds() - cpu_start
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    received = sum(e.puncher.stats.received for e in grid.endpoints) - received_start
    probes = probes_sent(ends) - probes_start
    gc.collect()
    rss_end = rss_bytes()
    steady = {
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "cpu_fraction_of_one_core": cpu / wall,
        "cpu_fraction_per_10000_ends": cpu / wall * 10000 / len(ends),
        "keepalive_probes_sent": probes,
        "expected_probes": len(ends) * wall / interval,
        "control_datagrams_received": received,
        "cpu_us_per_probe_and_ack": cpu / probes * 1e6 if probes else None,
        "rss_growth_bytes": None if rss_end is None or rss_after is None else rss_end - rss_after,
    }

    return {
        "connections": count,
        "sessions": sessions,
        "connection_ends": len(ends),
        "sockets": {"side_a": len(grid.side_a), "side_b": len(grid.side_b)},
        "keepalive": {"interval": interval, "timeout": timeout},
        "setup": {
            "batch": args.batch,
            "wall_seconds": setup_wall,
            "cpu_seconds": setup_cpu,
            "sessions_per_second": sessions / setup_wall,
        },
        "memory": memory,
        "steady_state": steady,
        "punch_failures": tally.punch_failures,
        "bindings_lost": tally.bindings_lost,
        "first_error": tally.first_error,
        "targets": {"cpu_fraction_of_one_core": TARGET_CPU, "bytes_per_connection": TARGET_BYTES},
        "python": sys.version.split()[0],
        "reactor": type(reactor).__name__,
    }


async def traced_sample(
    reactor: Any, sample: Grid, args: argparse.Namespace, tally: Tally, timeout: float
) -> dict[str, Any]:
    """Phases 2 and 3 for C{sample}, under tracemalloc: the allocations that stay."""
    count = len(sample.ends) // 2
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.take_snapshot()
        await punch_all(sample, count, args.batch, tally, args.interval, timeout)
        ends = sample.connected()
        await first_probes(reactor, ends, 1.0)
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = after.filter_traces(ignore).compare_to(before.filter_traces(ignore), args.detail)
    traced = _sizes(sum(s.size_diff for s in stats), len(ends))
    traced["sessions"] = len(ends) // 2
    traced["blocks_per_end"] = sum(s.count_diff for s in stats) / len(ends)
    traced["by_place_per_end"] = {
        _place(s.traceback[0]): round(s.size_diff / len(ends), 1)
        for s in stats[: args.top]
        if s.size_diff
    }
    return traced


def _sizes(total: int, ends: int) -> dict[str, Any]:
    return {"bytes": total, "per_end": total / ends, "per_session": 2 * total / ends}


def _place(frame: tracemalloc.Frame) -> str:
    """Where an allocation was made, short enough to read: from the package directory on."""
    parts = Path(frame.filename).parts
    name = parts[-1] if parts else frame.filename
    for anchor in ("twisted_nat", "twisted", "benchmarks"):
        if anchor in parts:
            name = "/".join(parts[len(parts) - parts[::-1].index(anchor) - 1 :])
            break
    return f"{name}:{frame.lineno}" if frame.lineno else name


def report(results: dict[str, Any]) -> str:
    setup, memory, steady = results["setup"], results["memory"], results["steady_state"]
    lines = [
        f"{results['sessions']} sessions ({results['connection_ends']} connection ends) over"
        f" {results['sockets']['side_a']} x {results['sockets']['side_b']} sockets;"
        f" punch failures {results['punch_failures']}, bindings lost {results['bindings_lost']}",
        f"set-up: {setup['wall_seconds']:.1f} s wall, {setup['cpu_seconds']:.1f} s CPU,"
        f" {setup['sessions_per_second']:.0f} sessions/s ({setup['batch']} at a time)",
    ]
    rss = memory.get("rss")
    if rss is not None:
        lines.append(
            f"memory, RSS: {rss['per_end']:.0f} B per connection end,"
            f" {rss['per_session']:.0f} B per session"
        )
    traced = memory.get("tracemalloc")
    if traced is not None:
        lines.append(
            f"memory, tracemalloc ({traced['sessions']} sessions): {traced['per_end']:.0f} B per"
            f" connection end, {traced['per_session']:.0f} B per session,"
            f" {traced['blocks_per_end']:.1f} blocks per end; largest:"
        )
        lines.extend(
            f"    {size:7.1f} B  {place}" for place, size in traced["by_place_per_end"].items()
        )
    lines.append(f"gc-tracked objects: {memory['gc_objects_per_end']:.1f} per end")
    if "data_delivered" in memory:
        lines.append(
            f"with one datagram sent by every end: {memory['data_delivered']} delivered"
            f" of {results['connection_ends']}"
        )
    per_probe = steady["cpu_us_per_probe_and_ack"]
    lines.append(
        f"steady state: {steady['cpu_fraction_of_one_core'] * 100:.2f} % of one core over"
        f" {steady['wall_seconds']:.0f} s"
        f" ({steady['cpu_fraction_per_10000_ends'] * 100:.2f} % per 10,000 connection ends);"
        f" {steady['keepalive_probes_sent']} probes sent"
        f" ({steady['expected_probes']:.0f} expected)"
        + (f", {per_probe:.0f} us of CPU per probe and its ACK" if per_probe else "")
    )
    if steady["rss_growth_bytes"] is not None:
        lines.append(f"RSS growth during steady state: {steady['rss_growth_bytes'] / 1024:.0f} KiB")
    verdicts = [
        f"CPU {'within' if steady['cpu_fraction_of_one_core'] < TARGET_CPU else 'OVER'}"
        f" target ({TARGET_CPU:.0%})"
    ]
    for name, figures in (("RSS", rss), ("tracemalloc", traced)):
        if figures is not None:
            verdicts.append(
                f"{name} {'within' if figures['per_end'] < TARGET_BYTES else 'OVER'}"
                f" target ({TARGET_BYTES // 1024} KiB per end)"
            )
    lines.append("; ".join(verdicts))
    return "\n".join(lines)


def raise_file_limit(needed: int) -> None:
    """Every socket is a descriptor; ask for the hard limit if the soft one is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").strip().split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10000, help="sessions (2 ends each)")
    parser.add_argument("--seconds", type=float, default=60.0, help="steady state measured")
    parser.add_argument("--batch", type=int, default=500, help="sessions punched at once")
    parser.add_argument("--interval", type=float, default=25.0, help="keep-alive interval")
    parser.add_argument(
        "--traced", type=int, default=1000, help="sessions measured with tracemalloc (0: none)"
    )
    parser.add_argument(
        "--data",
        action="store_true",
        help="every end sends one application datagram before memory is measured",
    )
    parser.add_argument(
        "--detail",
        choices=["filename", "lineno"],
        default="filename",
        help="group the tracemalloc figures by file or by line",
    )
    parser.add_argument("--top", type=int, default=12, help="tracemalloc places listed")
    parser.add_argument("--profile", help="write a cProfile of the steady state to this file")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    if min(args.connections, args.batch, args.seconds, args.interval) <= 0 or args.traced < 0:
        parser.error("--connections, --batch, --seconds and --interval must be positive")
    args.say = lambda text: print(text, file=sys.stderr, flush=True)

    raise_file_limit(4 * math.isqrt(args.connections + args.traced) + 256)
    quiet_logging()
    from twisted.internet import reactor

    outcome: list[Any] = []

    def run() -> None:
        d = ensureDeferred(measure(reactor, args))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    if not outcome or isinstance(outcome[0], Failure):
        if outcome:
            outcome[0].printTraceback()
        return 1
    results = outcome[0]
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0 if results["punch_failures"] == 0 and results["bindings_lost"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
