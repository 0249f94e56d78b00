"""
How large a datagram the path to a peer carries: datagram packetization
layer path MTU discovery (RFC 8899), as QUIC does it (RFC 9000 section
14.4), since aioquic has none.

QUIC starts at 1200 bytes, which every path carries; most carry 1452
(IPv6 over Ethernet) or 1472 (IPv4), and every packet aioquic builds costs
the sender the same CPU whatever its size, so larger datagrams move more
bytes for the same work.  A size is used only once the peer has
acknowledged a probe of exactly that size, sent with the don't-fragment
bit; a probe counts in no congestion window, and its loss is no
congestion signal.  A path change starts again from the base size, and so
do two probe timeouts in a row (a black hole: the path stopped carrying
what it did).

L{SizeSearch} is the decision, with no clock or socket; L{PathSizer} its
I/O on one QUIC connection.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from twisted_nat.bases import SHARED
from twisted_nat.connection import PeerConnection
from twisted_nat.streams import _aioquic
from twisted_nat.streams.driver import QuicDriver

# Linux's values (<linux/in.h>); the socket module does not name them.
_IP_MTU_DISCOVER = 10 if sys.platform.startswith("linux") else None
_IP_PMTUDISC_DO = 2

MAX_PROBES = 3
"""Probes of one size lost in a row before the path is taken not to carry it (RFC 8899)."""

BLACK_HOLE_PROBE_TIMEOUTS = 2
"""QUIC probe timeouts in a row, above the base size, that send it back to the base."""


class SizeSearch:
    """
    Which size to probe next, and which is confirmed: the candidates in
    ascending order, each until acknowledged or lost L{MAX_PROBES} times.
    """

    __slots__ = ("_base", "_candidates", "_failures", "_in_flight", "_index", "confirmed")

    def __init__(self, base: int, candidates: Sequence[int]) -> None:
        self._base = base
        self._candidates = tuple(size for size in candidates if size > base)
        self.confirmed = base
        self._index = 0
        self._failures = 0
        self._in_flight: int | None = None

    def next_probe(self) -> int | None:
        """The size to probe now, or None (a probe is out, or the search is over)."""
        if self._in_flight is not None or self._index >= len(self._candidates):
            return None
        self._in_flight = self._candidates[self._index]
        return self._in_flight

    def result(self, size: int, acked: bool) -> bool:
        """A probe's fate; whether the confirmed size grew."""
        if size != self._in_flight:
            return False
        self._in_flight = None
        if acked:
            self.confirmed = size
            self._index += 1
            self._failures = 0
            return True
        self._failures += 1
        if self._failures >= MAX_PROBES:
            self._index = len(self._candidates)
        return False

    def restart(self) -> None:
        """A new path: back to the base size, and search again."""
        self.confirmed = self._base
        self._index = 0
        self._failures = 0
        self._in_flight = None


def _fragmenting(sock: socket.socket) -> tuple[int, int] | None:
    """The option that lets C{sock} fragment, as (level, name), if this system has it."""
    if sock.family == socket.AF_INET and _IP_MTU_DISCOVER is not None:
        return socket.IPPROTO_IP, _IP_MTU_DISCOVER
    if sock.family == socket.AF_INET6:
        return socket.IPPROTO_IPV6, socket.IPV6_DONTFRAG
    return None


@contextmanager
def unfragmented(connection: PeerConnection) -> Iterator[None]:
    """
    While inside, datagrams to the peer leave every socket of ours with the
    don't-fragment bit, so that one too large for the path is lost, not
    split; after, each socket is as it was (what else the sockets carry
    keeps the system's default).
    """
    bases = connection.router.bases
    restore: list[tuple[socket.socket, int, int, int]] = []
    for base in {connection.base, SHARED}:
        sock = getattr(bases.transport_of(base), "socket", None)
        option = _fragmenting(sock) if isinstance(sock, socket.socket) else None
        if sock is None or option is None:
            continue
        level, name = option
        with suppress(OSError):
            before = sock.getsockopt(level, name)
            sock.setsockopt(level, name, _IP_PMTUDISC_DO if level == socket.IPPROTO_IP else 1)
            restore.append((sock, level, name, before))
    try:
        yield
    finally:
        for sock, level, name, before in restore:
            with suppress(OSError):
                sock.setsockopt(level, name, before)


class PathSizer:
    """
    Path MTU discovery for one QUIC connection.

    @param send: sends a datagram on the connection's path now.
    @param unfragmented: a context in which datagrams leave with the
        don't-fragment bit.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        base: int,
        candidates: Sequence[int],
        send: Callable[[bytes], None],
        unfragmented: Callable[[], AbstractContextManager[object]],
    ) -> None:
        self._reactor = reactor
        self._base = base
        self._search = SizeSearch(base, candidates)
        self._send = send
        self._unfragmented = unfragmented
        self._driver: QuicDriver | None = None
        self._path = 0
        """Counts path changes: a probe's fate on an earlier path is ignored."""

    @property
    def confirmed(self) -> int:
        return self._search.confirmed

    def start(self, driver: QuicDriver) -> None:
        """The handshake is done: probe the path (afresh, for a new QUIC connection)."""
        self._driver = driver
        self._search.restart()
        self._path += 1
        self._probe()

    def restart(self, driver: QuicDriver) -> None:
        """The path changed: the base size at once, then probe the new path."""
        self._search.restart()
        self._path += 1
        _aioquic.set_datagram_size(driver.quic, self._base)
        if self._driver is driver:
            self._probe()

    def stop(self) -> None:
        self._driver = None

    def check(self, driver: QuicDriver) -> None:
        """After a QUIC timer: a black hole above the base size sends it back there."""
        if (
            driver is self._driver
            and _aioquic.datagram_size(driver.quic) > self._base
            and _aioquic.probes_unanswered(driver.quic) >= BLACK_HOLE_PROBE_TIMEOUTS
        ):
            self.log.info("large datagrams are lost: back to {size} bytes", size=self._base)
            self.restart(driver)

    def _probe(self) -> None:
        driver = self._driver
        if driver is None or driver.stopped:
            return
        size = self._search.next_probe()
        if size is None:
            return
        path = self._path

        def done(size: int, acked: bool) -> None:
            # Inside aioquic's ACK or loss processing: act once it is over.
            self._reactor.callLater(0, self._settle, path, size, acked)

        probe = _aioquic.send_size_probe(driver.quic, size, self._reactor.seconds(), done)
        if probe is None:
            self._search.result(size, False)
            return
        with self._unfragmented():
            self._send(probe)
        driver.transmit()  # the loss detection timer now counts the probe

    def _settle(self, path: int, size: int, acked: bool) -> None:
        driver = self._driver
        if driver is None or driver.stopped or path != self._path:
            return
        if self._search.result(size, acked):
            _aioquic.set_datagram_size(driver.quic, size)
            self.log.debug("the path carries datagrams of {size} bytes", size=size)
        self._probe()
