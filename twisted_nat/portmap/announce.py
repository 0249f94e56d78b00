"""
A gateway's word that it has (re)started: PCP's unsolicited ANNOUNCE
(RFC 6887 14.1.3) and NAT-PMP's external address announcement (RFC 6886
3.2.1), multicast to 224.0.0.1:5350 when the gateway starts or its public
address changes.  A restarted gateway has forgotten every mapping; hearing
it say so, the mapper checks its mapping at once rather than at the next
renewal, up to half a lease later.

Anyone on the LAN can send such a datagram with the gateway's address, so
it only ever brings a check forward, at most once per
L{ANNOUNCE_SPACING}, and only from the gateway's address and port.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IMulticastTransport, IReactorMulticast
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.limits import DropLog
from twisted_nat.portmap import natpmp, pcp

GROUP = "224.0.0.1"
"""All hosts on the link: where gateways announce."""
PORT = 5350
"""The clients' port of PCP and NAT-PMP, where announcements go."""
ANNOUNCE_SPREAD = 5.0
"""
Seconds over which a check after an announcement is spread at random, so
that a gateway's many clients do not all ask at the same moment.
"""
ANNOUNCE_SPACING = 10.0
"""Seconds after one announcement during which others bring nothing forward."""

_PCP_HEAD = struct.Struct("!BBBBII12x")
_NATPMP_ADDRESS = struct.Struct("!BBHI4s")
OPCODE_ANNOUNCE = 0


def announced_epoch(data: bytes) -> int | None:
    """
    The gateway's epoch in a PCP ANNOUNCE response or a NAT-PMP external
    address response that reports success; None for any other bytes.
    """
    if len(data) >= _PCP_HEAD.size and data[0] == pcp.VERSION:
        if len(data) > pcp.MAX_SIZE or len(data) % 4:
            return None
        _, opcode, _, result, _, epoch = _PCP_HEAD.unpack_from(data)
        if opcode == pcp.RESPONSE | OPCODE_ANNOUNCE and result == pcp.ResultCode.SUCCESS:
            return int(epoch)
        return None
    if len(data) == _NATPMP_ADDRESS.size and data[0] == natpmp.VERSION:
        _, opcode, result, epoch, _ = _NATPMP_ADDRESS.unpack(data)
        if opcode == natpmp.RESPONSE | natpmp.OP_ADDRESS and result == natpmp.ResultCode.SUCCESS:
            return int(epoch)
    return None


class AnnouncementListener(DatagramProtocol):
    """
    Takes announcements from C{gateway()}'s address and the servers' port
    only, and tells C{heard} the epoch; anything else is dropped and
    counted in C{drops}.
    """

    def __init__(
        self,
        gateway: Callable[[], str | None],
        heard: Callable[[int], object],
        drops: DropLog,
    ) -> None:
        self._gateway = gateway
        self._heard = heard
        self._drops = drops

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        host, port = addr[0], addr[1]
        if port != pcp.PORT or host != self._gateway():
            self._drops.drop(
                "announcement not from the gateway",
                "dropped an announcement from {host}:{port}: not the gateway",
                host=host,
                port=port,
            )
            return
        epoch = announced_epoch(data)
        if epoch is None:
            self._drops.drop(
                "malformed announcement",
                "dropped {size} bytes from the gateway: no announcement",
                size=len(data),
            )
            return
        self._heard(epoch)


class Announcements:
    """
    The listening socket of an L{AnnouncementListener}, if one could be
    had: a machine without multicast, or a port the system refuses, only
    means no announcements.
    """

    log = Logger()

    def __init__(self, reactor: IReactorMulticast, listener: AnnouncementListener) -> None:
        self._reactor = reactor
        self._listener = listener
        self.port: IMulticastTransport | None = None

    def start(self) -> None:
        try:
            port = self._reactor.listenMulticast(PORT, self._listener, listenMultiple=True)
        except (CannotListenError, OSError) as e:
            self.log.debug("port mapping: no announcements from the gateway: {error}", error=e)
            return
        self.port = port
        port.joinGroup(GROUP).addErrback(self._not_joined)

    def _not_joined(self, failure: Failure) -> None:
        # The all-hosts group is joined by every multicast interface anyway.
        self.log.debug("port mapping: not joined to {group}: {error}", group=GROUP, error=failure)

    def stop(self) -> Deferred[None] | None:
        port, self.port = self.port, None
        if port is None:
            return None
        return cast(IListeningPort, port).stopListening()
