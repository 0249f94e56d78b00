"""
The extra sockets of the birthday method's hard side and of meeting runs.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import cast

from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from twisted_nat.bases import Base, BaseRegistry, extra_base
from twisted_nat.limits import descriptors_left
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.sockbuf import widen_receive_buffer


class ExtraSockets:
    """
    Extra sockets, each a base of the registry while it is open.  They are
    opened for one punch (L{open}); when it ends (L{settle}) all but the
    one its path uses are closed; that one is kept until no connection
    uses it any more (L{prune}), and given a receive buffer of
    C{receive_buffer} bytes (L{widen_receive_buffer}): the others never
    carry a connection's data.
    """

    log = Logger()

    def __init__(
        self, reactor: IReactorUDP, bases: BaseRegistry, interface: str, receive_buffer: int = 0
    ) -> None:
        self._reactor = reactor
        self._bases = bases
        self._interface = interface
        self._receive_buffer = receive_buffer
        self._ports: dict[Base, IListeningPort] = {}
        self._punching: dict[bytes, list[Base]] = {}
        self._kept: set[Base] = set()

    @property
    def open_bases(self) -> list[Base]:
        """The bases open now, punching or kept."""
        return list(self._ports)

    @property
    def kept(self) -> frozenset[Base]:
        """The bases kept for the connections whose path uses them."""
        return frozenset(self._kept)

    def open(self, punch_id: bytes, count: int, method: str) -> list[Base]:
        """
        Up to C{count} sockets for the punch C{punch_id}, named by their
        port, never taking the descriptors L{descriptors_left} keeps free.
        Running out of ports or file descriptors costs the method some of
        its chance, not the punch: the sockets opened are used.
        """
        opened: list[Base] = []
        left = descriptors_left()
        if left is not None and left < count:
            self.log.warn(
                "opening {left} of {count} {method} sockets: the rest of the descriptors"
                " stay free for the process",
                left=left,
                count=count,
                method=method,
            )
            count = left
        for _ in range(count):
            mux = UDPMultiplexer()
            try:
                port = self._reactor.listenUDP(
                    0, cast(DatagramProtocol, mux), self._interface, maxPacketSize=8192
                )
            except (CannotListenError, OSError) as e:
                self.log.warn(
                    "opened only {opened} of {count} {method} sockets: {error}",
                    opened=len(opened),
                    count=count,
                    method=method,
                    error=e,
                )
                break
            base = extra_base(method, port.getHost().port)  # type: ignore[attr-defined]
            self._bases.add(base, mux)
            self._ports[base] = port
            opened.append(base)
        self._punching[punch_id] = opened
        return opened

    def settle(self, punch_id: bytes, chosen: Base | None) -> None:
        """The punch ended on the base C{chosen}: close the other sockets it had."""
        for base in self._punching.pop(punch_id, ()):
            if base is chosen:
                self._kept.add(base)
                widen_receive_buffer(self._ports.get(base), self._receive_buffer)
            else:
                self._close(base)

    def prune(self, in_use: Collection[Base]) -> None:
        """Close the kept sockets that no connection's path uses any more."""
        for base in [base for base in self._kept if base not in in_use]:
            self._kept.discard(base)
            self._close(base)

    def close_all(self) -> None:
        for base in list(self._ports):
            self._close(base)
        self._punching.clear()
        self._kept.clear()

    def _close(self, base: Base) -> None:
        port = self._ports.pop(base, None)
        self._bases.remove(base)
        if port is not None:
            port.stopListening()
