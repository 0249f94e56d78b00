"""
Offer a fixed rate of STUN Binding requests over UDP and report how many were answered.

A server benchmark is only as good as its load generator: if the generator falls behind
its schedule, a slow server looks fast (it was simply offered less).  This script
therefore keeps its own per-request cost to a minimum and reports how well it kept to
its schedule, next to what the server did:

  - every request (20-byte header, optionally SOFTWARE and FINGERPRINT) is encoded
    before the clock starts, each with its own random 96-bit transaction id, so sending
    is one C{send()} system call per request;
  - sending follows a C{perf_counter} schedule: request I{i} is due at
    C{start + i / rate}; whenever the loop wakes up it sends everything that is due (at
    most C{max_burst} at a time), then drains replies, then sleeps in C{select()} (which
    has microsecond resolution, unlike C{poll}/C{epoll}) until the next request is due
    or a reply arrives;
  - replies are read on the same non-blocking socket in the same loop (a second thread
    would only fight for the GIL) and matched to requests by transaction id, which
    gives the latency of every answered request;
  - socket buffers are enlarged (beyond C{rmem_max} when running as root) so a burst
    of replies is not dropped by the generator's own socket.

Stdlib only, so it runs with any Python 3.11 on the benchmark machine.  Use it
from the command line (prints JSON) or import L{run_load} and L{cpu_seconds}.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import ipaddress
import itertools
import json
import math
import os
import select
import socket
import struct
import sys
import time
import zlib
from array import array
from collections.abc import Sequence
from typing import Final, TypedDict

MAGIC_COOKIE: Final = 0x2112A442
BINDING_REQUEST: Final = 0x0001
BINDING_SUCCESS: Final = b"\x01\x01"
SOFTWARE: Final = 0x8022
FINGERPRINT: Final = 0x8028
FINGERPRINT_XOR: Final = 0x5354554E

DESCRIPTION: Final = "Offer a fixed rate of STUN Binding requests over UDP; print JSON."
DEFAULT_RATE: Final = 5000.0
DEFAULT_DURATION: Final = 20.0
DEFAULT_DRAIN: Final = 1.0
DEFAULT_MAX_BURST: Final = 64
SOCKET_BUFFER_BYTES: Final = 8 * 1024 * 1024
SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_SNDBUFFORCE: Final = getattr(socket, "SO_SNDBUFFORCE", 32)


class LoadResult(TypedDict):
    """What L{run_load} measured; the command line prints it as JSON."""

    target: str
    requested_rate: float
    requested_duration: float
    offered: int
    """Requests the schedule asked for: C{round(rate * duration)}."""
    sent: int
    """Requests the kernel accepted; less than C{offered} only if sending kept failing."""
    send_errors: int
    """C{send()} calls refused with ENOBUFS/EAGAIN/ECONNREFUSED (retried later)."""
    answered: int
    """Distinct requests that got a Binding success response."""
    error_responses: int
    """Responses that matched a request but were not Binding success (e.g. 4xx errors)."""
    fraction_answered: float
    """C{answered / offered}: the server's answer rate including any generator shortfall."""
    fraction_of_sent_answered: float
    """C{answered / sent}: the server's answer rate alone."""
    achieved_send_rate: float
    """C{sent} over the time from the first to the last send."""
    send_duration: float
    """Seconds from the first to the last send."""
    duration: float
    """Seconds from the first send to the end of the drain period."""
    send_lag_p99_ms: float
    """99th percentile of how late a request left compared to its scheduled time."""
    send_lag_max_ms: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    generator_cpu_seconds: float
    """CPU time this process used while running; near C{duration} means it saturated."""
    server_cpu_seconds: float | None
    """CPU time of C{server_pid} (and its descendants) during the run, if given."""
    receive_buffer_bytes: int
    send_buffer_bytes: int


def build_requests(
    count: int, *, software: str | None = None, fingerprint: bool = False
) -> tuple[list[bytes], dict[bytes, int]]:
    """
    Encode C{count} Binding requests with unique random transaction ids.

    Done up front so the measured loop never encodes anything.

    @return: The requests, and a map from transaction id to request index.
    """
    attributes = b""
    if software is not None:
        value = software.encode("utf-8")
        attributes += struct.pack("!HH", SOFTWARE, len(value)) + value
        attributes += b"\0" * (-len(value) % 4)
    length = len(attributes) + (8 if fingerprint else 0)
    header = struct.pack("!HHI", BINDING_REQUEST, length, MAGIC_COOKIE)
    requests: list[bytes] = []
    index: dict[bytes, int] = {}
    pool = os.urandom(12 * count)  # one system call instead of one per request
    pooled = (pool[start : start + 12] for start in range(0, len(pool), 12))
    spares = iter(lambda: os.urandom(12), None)  # endless, used only after a collision
    for transaction_id in itertools.chain(pooled, spares):
        if len(requests) == count:
            break
        if transaction_id in index:
            continue  # a 96-bit collision is absurdly unlikely, but ids must be unique
        index[transaction_id] = len(requests)
        request = header + transaction_id + attributes
        if fingerprint:
            crc = (zlib.crc32(request) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            request += struct.pack("!HHI", FINGERPRINT, 4, crc)
        requests.append(request)
    return requests, index


def cpu_seconds(pid: int, *, include_children: bool = True) -> float:
    """
    Return the CPU time (user + system, all threads) process C{pid} has used so far.

    Read from C{/proc/PID/stat}, so it works for any process we may inspect.  With
    C{include_children}, adds the CPU time of children it has already reaped (the
    kernel's C{cutime}/C{cstime}) and of its live descendants, so a server that forks
    workers is measured completely.  Take the difference of two calls to measure an
    interval.

    @raise ProcessLookupError: There is no such process.
    """
    fields = _stat_fields(pid)
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    total = ticks / os.sysconf("SC_CLK_TCK")
    if include_children:
        total += (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")
        for child in _children(pid):
            # A child that exits between listing and reading moves into cutime anyway.
            with contextlib.suppress(ProcessLookupError):
                total += cpu_seconds(child, include_children=True)
    return total


def _stat_fields(pid: int) -> list[str]:
    """
    Return the fields of C{/proc/PID/stat} after the command name, starting at C{state}.

    The command name is in parentheses and may itself contain spaces and parentheses,
    so the split happens at the last closing parenthesis.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            text = stat.read().decode("ascii", errors="replace")
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    return text[text.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    """Return the ids of the live children of C{pid}, from C{/proc/*/stat}."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(_stat_fields(int(entry))[1]) == pid:  # field 4: ppid
                    children.append(int(entry))
            except (ProcessLookupError, IndexError, ValueError, PermissionError):
                continue
    return children


def run_load(
    host: str,
    port: int,
    rate: float = DEFAULT_RATE,
    duration: float = DEFAULT_DURATION,
    *,
    software: str | None = None,
    fingerprint: bool = False,
    drain: float = DEFAULT_DRAIN,
    max_burst: int = DEFAULT_MAX_BURST,
    server_pid: int | None = None,
    allow_remote: bool = False,
) -> LoadResult:
    """
    Offer C{rate} Binding requests per second to C{host}:C{port} for C{duration} seconds.

    After the last request, replies are awaited for up to C{drain} more seconds.

    @param software: Add a SOFTWARE attribute with this text to every request.
    @param fingerprint: Add a FINGERPRINT attribute to every request.
    @param max_burst: The most requests sent back to back before replies are read
        again; only reached when the loop fell behind its schedule.
    @param server_pid: Also measure this process's CPU time over the run.
    @param allow_remote: Permit a non-loopback target.  Off by default: this is a
        flood generator, and pointing it at another machine should be deliberate.
    @raise ValueError: Bad parameters, or a non-loopback target without
        C{allow_remote}.
    """
    if rate <= 0 or duration <= 0 or drain < 0 or max_burst < 1:
        raise ValueError("rate and duration must be positive, drain >= 0, max_burst >= 1")
    family, address = _resolve(host, port)
    if not allow_remote and not ipaddress.ip_address(address[0]).is_loopback:
        raise ValueError(f"{address[0]} is not a loopback address (see allow_remote)")
    total = max(1, round(rate * duration))
    requests, index = build_requests(total, software=software, fingerprint=fingerprint)

    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        receive_buffer, send_buffer = _enlarge_buffers(sock)
        sock.connect(address)  # send() instead of sendto(); only the target's replies
        sock.setblocking(False)
        server_cpu_before = cpu_seconds(server_pid) if server_pid is not None else 0.0
        cpu_before = time.process_time()
        loop = _Loop(sock, requests, index, rate, max_burst)
        loop.run(drain)
        generator_cpu = time.process_time() - cpu_before
        server_cpu = cpu_seconds(server_pid) - server_cpu_before if server_pid is not None else None

    return loop.result(
        target=f"{address[0]}:{address[1]}",
        duration=duration,
        generator_cpu=generator_cpu,
        server_cpu=server_cpu,
        receive_buffer=receive_buffer,
        send_buffer=send_buffer,
    )


class _Loop:
    """The measured send/receive loop and its raw observations."""

    def __init__(
        self,
        sock: socket.socket,
        requests: list[bytes],
        index: dict[bytes, int],
        rate: float,
        max_burst: int,
    ) -> None:
        self.sock = sock
        self.requests = requests
        self.index = index
        self.rate = rate
        self.max_burst = max_burst
        self.total = len(requests)
        self.sent_at = array("d", bytes(8 * self.total))
        self.answered = bytearray(self.total)
        self.latencies: list[float] = []
        self.replies = 0
        self.sent = 0
        self.send_errors = 0
        self.error_responses = 0
        self.start = 0.0
        self.end = 0.0

    def run(self, drain: float) -> None:
        """Send on schedule while reading replies, then read replies for C{drain} s."""
        sock, requests, sent_at = self.sock, self.requests, self.sent_at
        total, rate, max_burst = self.total, self.rate, self.max_burst
        clock = time.perf_counter
        readable = [sock]
        self.start = start = clock() + 0.01  # a little slack so request 0 is not late
        sent = 0
        while sent < total:
            now = clock()
            due = min(total, math.floor((now - start) * rate) + 1, sent + max_burst)
            while sent < due:
                try:
                    sock.send(requests[sent])
                except OSError as error:
                    if error.errno not in (errno.ENOBUFS, errno.EAGAIN, errno.ECONNREFUSED):
                        raise
                    self.send_errors += 1
                    break  # full queue or ICMP error: read replies, retry this one later
                sent_at[sent] = now
                sent += 1
            self._receive()
            wait = start + sent / rate - clock()
            if wait > 0:
                select.select(readable, [], [], wait)
        self.sent = sent
        last_send = sent_at[sent - 1]
        deadline = last_send + drain
        while self.replies < sent and (remaining := deadline - clock()) > 0:
            select.select(readable, [], [], remaining)
            self._receive()
        self.end = clock()

    def _receive(self) -> None:
        """Read every reply already queued and record its latency."""
        sock, index, answered = self.sock, self.index, self.answered
        clock = time.perf_counter
        while True:
            try:
                data = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionRefusedError:
                continue  # ICMP port unreachable: nobody listens (yet); keep reading
            received = clock()
            position = index.get(data[8:20])
            if position is None or answered[position]:
                continue  # not ours, or a duplicate
            answered[position] = 1
            self.replies += 1
            if data[:2] == BINDING_SUCCESS:
                self.latencies.append(received - self.sent_at[position])
            else:
                self.error_responses += 1

    def result(
        self,
        *,
        target: str,
        duration: float,
        generator_cpu: float,
        server_cpu: float | None,
        receive_buffer: int,
        send_buffer: int,
    ) -> LoadResult:
        """Summarise the observations."""
        sent = self.sent
        lags = sorted(self.sent_at[i] - (self.start + i / self.rate) for i in range(sent))
        latencies = sorted(self.latencies)
        send_duration = self.sent_at[sent - 1] - self.sent_at[0] if sent > 1 else 0.0
        answered = len(latencies)
        return LoadResult(
            target=target,
            requested_rate=self.rate,
            requested_duration=duration,
            offered=self.total,
            sent=sent,
            send_errors=self.send_errors,
            answered=answered,
            error_responses=self.error_responses,
            fraction_answered=round(answered / self.total, 6),
            fraction_of_sent_answered=round(answered / sent, 6) if sent else 0.0,
            achieved_send_rate=round((sent - 1) / send_duration, 1) if send_duration else 0.0,
            send_duration=round(send_duration, 4),
            duration=round(self.end - self.sent_at[0], 4),
            send_lag_p99_ms=_milliseconds(_percentile(lags, 0.99)) or 0.0,
            send_lag_max_ms=_milliseconds(lags[-1] if lags else None) or 0.0,
            latency_p50_ms=_milliseconds(_percentile(latencies, 0.50)),
            latency_p99_ms=_milliseconds(_percentile(latencies, 0.99)),
            latency_max_ms=_milliseconds(latencies[-1] if latencies else None),
            generator_cpu_seconds=round(generator_cpu, 3),
            server_cpu_seconds=round(server_cpu, 3) if server_cpu is not None else None,
            receive_buffer_bytes=receive_buffer,
            send_buffer_bytes=send_buffer,
        )


def _percentile(ordered: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence; C{None} if it is empty."""
    if not ordered:
        return None
    rank = max(1, math.ceil(len(ordered) * fraction))
    return ordered[rank - 1]


def _milliseconds(seconds: float | None) -> float | None:
    """Seconds to milliseconds rounded to microseconds, passing C{None} through."""
    return None if seconds is None else round(seconds * 1000.0, 3)


def _resolve(host: str, port: int) -> tuple[socket.AddressFamily, tuple[str, int]]:
    """Resolve C{host} once, before the clock starts; prefer IPv4 like most servers."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    family, _, _, _, sockaddr = infos[0]
    return family, (str(sockaddr[0]), int(sockaddr[1]))


def _enlarge_buffers(sock: socket.socket) -> tuple[int, int]:
    """
    Ask for L{SOCKET_BUFFER_BYTES} of receive and send buffer.

    The plain options are capped by C{net.core.rmem_max}/C{wmem_max}; the C{*FORCE}
    variants (root only) are not, so they are tried first.

    @return: The sizes the kernel granted (it reports twice the payload size).
    """
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point: run one load and print the result as JSON."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1", help="target (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=3478, help="target UDP port (default 3478)")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="requests per second")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION, help="seconds")
    parser.add_argument(
        "--drain", type=float, default=DEFAULT_DRAIN, help="seconds to await late replies"
    )
    parser.add_argument("--software", help="add a SOFTWARE attribute with this text")
    parser.add_argument("--fingerprint", action="store_true", help="add a FINGERPRINT")
    parser.add_argument("--max-burst", type=int, default=DEFAULT_MAX_BURST)
    parser.add_argument("--server-pid", type=int, help="also report this process's CPU time")
    parser.add_argument("--allow-remote", action="store_true", help="permit a non-loopback target")
    args = parser.parse_args(argv)
    try:
        result = run_load(
            args.host,
            args.port,
            args.rate,
            args.duration,
            software=args.software,
            fingerprint=args.fingerprint,
            drain=args.drain,
            max_burst=args.max_burst,
            server_pid=args.server_pid,
            allow_remote=args.allow_remote,
        )
    except (ValueError, OSError) as error:
        parser.error(str(error))
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
