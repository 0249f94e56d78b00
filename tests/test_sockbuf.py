"""
The sockets that carry connections ask for a larger receive buffer
(L{twisted_nat.sockbuf}): the service's shared sockets, both families,
and an extra socket once a path uses it; the system's limit caps what
they get, and 0 leaves the system's default.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.interfaces import ISystemHandle
from zope.interface import implementer

from twisted_nat.bases import BaseRegistry
from twisted_nat.punch.sockets import ExtraSockets
from twisted_nat.service import NATTraversalService
from twisted_nat.service.settings import PeerSettings
from twisted_nat.sockbuf import widen_receive_buffer

reactor: Any = global_reactor
ASKED = 1 << 20


def _receive_buffer(skt: socket.socket) -> int:
    return int(skt.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def _default() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fresh:
        return _receive_buffer(fresh)


def _linux_grant(asked: int) -> int:
    """What Linux reports for C{asked}: twice the request, capped at C{rmem_max}."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the kernel's rule for receive buffers is Linux's here")
    limit = int(Path("/proc/sys/net/core/rmem_max").read_text())
    granted = 2 * min(asked, limit)
    if granted <= _default():
        pytest.skip("this system's limit leaves no room above its default buffer")
    return granted


@implementer(ISystemHandle)
class Handle:
    def __init__(self, skt: object) -> None:
        self._socket = skt

    def getHandle(self) -> object:
        return self._socket


@pytest.fixture
def udp_socket() -> Iterator[socket.socket]:
    skt = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        yield skt
    finally:
        skt.close()


def test_the_kernel_is_asked_and_its_answer_returned(udp_socket: socket.socket) -> None:
    granted = _linux_grant(ASKED)
    assert widen_receive_buffer(Handle(udp_socket), ASKED) == granted
    assert _receive_buffer(udp_socket) == granted


def test_zero_leaves_the_default(udp_socket: socket.socket) -> None:
    before = _receive_buffer(udp_socket)
    assert widen_receive_buffer(Handle(udp_socket), 0) is None
    assert _receive_buffer(udp_socket) == before


def test_a_port_without_a_socket_is_left_alone() -> None:
    assert widen_receive_buffer(object(), ASKED) is None
    assert widen_receive_buffer(Handle("not a socket"), ASKED) is None
    assert widen_receive_buffer(None, ASKED) is None


def test_a_refusal_is_no_error(udp_socket: socket.socket) -> None:
    udp_socket.close()
    assert widen_receive_buffer(Handle(udp_socket), ASKED) is None


def test_a_negative_size_is_refused() -> None:
    with pytest.raises(ValueError):
        PeerSettings(receive_buffer=-1)


def _service(receive_buffer: int) -> NATTraversalService:
    return NATTraversalService(
        [],
        reactor=reactor,
        settings=PeerSettings(
            interface="127.0.0.1",
            interface6="::1",
            detect_behavior=False,
            receive_buffer=receive_buffer,
        ),
    )


@pytest_twisted.ensureDeferred
async def test_the_shared_sockets_are_widened() -> None:
    granted = _linux_grant(ASKED)
    default = _default()
    for asked, expected in ((ASKED, granted), (0, default)):
        service = _service(asked)
        service.startService()
        try:
            ports = [service.port, service.ipv6.port]
            sockets = [cast(Any, port).getHandle() for port in ports if port is not None]
            assert sockets, "no shared socket"
            assert [_receive_buffer(skt) for skt in sockets] == [expected] * len(sockets)
        finally:
            await service.stopService()


def test_only_the_extra_socket_a_path_keeps_is_widened() -> None:
    granted = _linux_grant(ASKED)
    default = _default()
    sockets = ExtraSockets(reactor, BaseRegistry(), "127.0.0.1", ASKED)
    try:
        opened = sockets.open(b"punch", 3, "birthday")
        assert len(opened) == 3
        handles = {base: sockets._ports[base].getHandle() for base in opened}  # type: ignore[attr-defined]
        assert {_receive_buffer(skt) for skt in handles.values()} == {default}
        sockets.settle(b"punch", opened[1])
        assert sockets.open_bases == [opened[1]]
        assert _receive_buffer(handles[opened[1]]) == granted
    finally:
        sockets.close_all()
