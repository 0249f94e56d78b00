"""
The IPv6 shared socket: IPv6's counterpart of the service's IPv4 socket,
with a multiplexer and a STUN client of its own.

One socket per family, rather than one dual-stack socket, keeps every part
as it is: a NAT binding, a base and a multiplexer each belong to one
family, and no IPv4 peer is ever seen as C{::ffff:a.b.c.d}.  The socket is
bound C{IPV6_V6ONLY}, on the IPv4 socket's port when that is free (one
port for a firewall's rules), and registered as the base L{SHARED6}, so
the puncher, the keep-alive, the data router and QUIC hear it as they
hear every base.  A machine without IPv6 (the bind fails) goes on with
IPv4 alone, as before, and says so once at info level.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import cast

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorSocket,
    IReactorTime,
    IReactorUDP,
)
from twisted.logger import Logger

from twisted_nat.address import Address, format_address
from twisted_nat.bases import SHARED6, BaseRegistry
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.service.settings import PeerSettings
from twisted_nat.sockbuf import widen_receive_buffer
from twisted_nat.stun.client import STUNClient
from twisted_nat.stun.message import MessageClass, Method

ALL_IPV4 = ("", "0.0.0.0")


def ipv6_interface(ipv6: bool, interface: str, interface6: str | None) -> str | None:
    """
    Where the IPv6 socket binds, or None for no IPv6 socket: C{interface6}
    when given, every IPv6 address when the IPv4 socket binds every IPv4
    address, and nothing when it binds one (a service confined to one IPv4
    address is not spread over IPv6 unasked).
    """
    if not ipv6:
        return None
    if interface6 is not None:
        return interface6
    return "::" if interface in ALL_IPV4 else None


def ipv6_servers(servers: Sequence[Address]) -> list[Address]:
    """The STUN servers the IPv6 socket asks: IPv6 literals, and host names (resolved to IPv6)."""
    return [s for s in servers if not isIPAddress(s[0])]


def ipv4_servers(servers: Sequence[Address]) -> list[Address]:
    """The STUN servers the IPv4 socket asks: all but IPv6 literals."""
    return [s for s in servers if not isIPv6Address(s[0])]


class IPv6Socket:
    """
    The service's IPv6 socket, once bound.

    @ivar mux: its multiplexer.
    @ivar stun: its STUN client (Binding answers), for the IPv6
        server-reflexive candidate.
    @ivar port: the listening port, or None when there is none.
    """

    log = Logger()

    def __init__(
        self, reactor: IReactorTime, bases: BaseRegistry, stun_servers: Sequence[Address]
    ) -> None:
        self._reactor = reactor
        self._bases = bases
        self.mux = UDPMultiplexer()
        self.stun = STUNClient(ipv6_servers(stun_servers), reactor=reactor)
        self.port: IListeningPort | None = None

    @property
    def local_port(self) -> int | None:
        if self.port is None:
            return None
        return self.port.getHost().port  # type: ignore[attr-defined,no-any-return]

    def start(self, settings: PeerSettings, shared_port: int) -> bool:
        """
        Bind where the settings say (L{ipv6_interface}), on their port or
        else on the IPv4 socket's C{shared_port}; False for no IPv6 socket.
        """
        interface = ipv6_interface(settings.ipv6, settings.interface, settings.interface6)
        if interface is None:
            return False
        bound = self.bind(interface, settings.local_port or shared_port, bool(settings.local_port))
        if bound:
            widen_receive_buffer(self.port, settings.receive_buffer)
        return bound

    def bind(self, interface: str, port: int, fixed: bool) -> bool:
        """
        Bind on C{interface}, port C{port} (when taken and not C{fixed},
        any port), and join the bases; False when IPv6 is not to be had.
        """
        try:
            self.port = self._listen(interface, port)
        except (CannotListenError, OSError) as e:
            if fixed or port == 0:
                return self._without(interface, e)
            try:
                self.port = self._listen(interface, 0)
            except (CannotListenError, OSError) as e:
                return self._without(interface, e)
        self.mux.add_stun(self.stun, [Method.BINDING], [MessageClass.SUCCESS, MessageClass.ERROR])
        self._bases.add(SHARED6, self.mux)
        self.log.info(
            "IPv6 socket on {address}", address=format_address((interface, self.local_port or 0))
        )
        return True

    def _without(self, interface: str, error: BaseException) -> bool:
        self.log.info(
            "no IPv6 socket on {interface} ({error}): IPv4 only", interface=interface, error=error
        )
        return False

    def _listen(self, interface: str, port: int) -> IListeningPort:
        reactor = self._reactor
        if not IReactorSocket.providedBy(reactor):
            # A reactor without sockets of its own (a simulated host) binds as it can.
            return cast(IReactorUDP, reactor).listenUDP(
                port,
                self.mux,  # type: ignore[arg-type]
                interface,
                maxPacketSize=8192,
            )
        skt = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            # IPv6 only: the IPv4 socket may hold this port's IPv4 side.
            skt.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            skt.bind((interface, port))
            skt.setblocking(False)
            return cast(IReactorSocket, reactor).adoptDatagramPort(
                skt.fileno(),
                socket.AF_INET6,
                self.mux,  # type: ignore[arg-type]
                maxPacketSize=8192,
            )
        finally:
            # The reactor holds a duplicate of the descriptor.
            skt.close()

    def close(self) -> object:
        """Stop listening (the Deferred of C{stopListening}, or None)."""
        if self.port is None:
            return None
        self._bases.remove(SHARED6)
        port, self.port = self.port, None
        return port.stopListening()
