"""
The shared socket's sends: the port's own checks judge the first datagram
to an address, later ones go to the socket directly, and what the port
refuses is refused every time.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.internet import udp
from twisted.internet.error import InvalidAddressError

from twisted_nat.mux import UDPMultiplexer


@pytest.fixture
def sockets() -> Iterator[tuple[UDPMultiplexer, udp.Port, socket.socket, list[Any]]]:
    mux = UDPMultiplexer()
    port = udp.Port(0, mux, "127.0.0.1")
    port.startListening()
    checked: list[Any] = []
    write = port.write

    def counting(datagram: bytes, addr: Any = None) -> None:
        checked.append(addr)
        write(datagram, addr)

    port.write = counting  # type: ignore[method-assign]
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    peer.bind(("127.0.0.1", 0))
    peer.settimeout(2.0)
    try:
        yield mux, port, peer, checked
    finally:
        peer.close()
        port.stopListening()


def test_only_the_first_datagram_to_an_address_goes_through_the_ports_checks(sockets) -> None:
    mux, port, peer, checked = sockets
    address = peer.getsockname()
    for n in range(3):
        mux.write(b"datagram %d" % n, address)
    assert [peer.recv(100) for _ in range(3)] == [b"datagram 0", b"datagram 1", b"datagram 2"]
    assert checked == [address]


def test_a_host_name_is_refused_every_time(sockets) -> None:
    mux, port, peer, checked = sockets
    for _ in range(2):
        with pytest.raises(InvalidAddressError):
            mux.write(b"x", ("localhost", peer.getsockname()[1]))
    assert len(checked) == 2
