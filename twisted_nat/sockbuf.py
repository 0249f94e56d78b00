"""
Receive buffers for the sockets a connection's data arrives on.

A QUIC sender lets out a congestion window's worth at once.  While the
receiving process is busy with the datagrams before them, the kernel
holds them in the socket's receive buffer; Linux's default (about 208
KiB) overflows under a fast stream, and each datagram lost there is a
loss to congestion control, which shrinks its window for it.  The
sockets that carry connections ask for a larger buffer; the system's own
limit (C{net.core.rmem_max} on Linux) still caps what they get.
"""

from __future__ import annotations

import socket

from twisted.internet.interfaces import ISystemHandle
from twisted.logger import Logger

RECEIVE_BUFFER = 4 << 20
"""Bytes of receive buffer asked for by default (as quic-go asks for about 7 MB)."""

log = Logger()


def widen_receive_buffer(port: object, size: int) -> int | None:
    """
    Ask for a receive buffer of C{size} bytes on C{port}'s socket: the
    size the kernel then reports, or None when nothing was asked (C{size}
    0, or a port without a socket of its own, as a simulated host's).  A
    system that refuses keeps its default, which is no error: only the
    speed of a fast stream depends on it.
    """
    if size <= 0 or not ISystemHandle.providedBy(port):
        return None
    handle = port.getHandle()
    if not isinstance(handle, socket.socket):
        return None
    try:
        handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
        given = int(handle.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    except OSError as e:
        log.debug("receive buffer left as it was: {error}", error=e)
        return None
    log.debug("receive buffer of {given} bytes (asked for {size})", given=given, size=size)
    return given
