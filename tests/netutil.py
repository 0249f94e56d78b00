"""Helpers for tests that use real sockets on loopback."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted_nat.stun.server import STUNServerGroup


def free_udp_port(*hosts: str) -> int:
    """A UDP port that is free on every one of C{hosts} right now."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((hosts[0], 0))
            port = int(probe.getsockname()[1])
            others = []
            try:
                for host in hosts[1:]:
                    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    others.append(other)
                    other.bind((host, port))
            except OSError:
                continue
            finally:
                for other in others:
                    other.close()
            return port
    raise RuntimeError(f"no UDP port free on all of {hosts}")


def free_udp_ports(count: int, *hosts: str) -> list[int]:
    """C{count} distinct ports, each free on every one of C{hosts}."""
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_udp_port(*hosts))
    return sorted(ports)


@contextmanager
def rfc5780_group(
    reactor: Any, kind: type[STUNServerGroup] = STUNServerGroup
) -> Iterator[STUNServerGroup]:
    """An RFC 5780 server group listening on 127.0.0.1 and 127.0.0.2, free ports."""
    primary, alternate = free_udp_ports(2, "127.0.0.1", "127.0.0.2")
    group = kind(("127.0.0.1", primary), ("127.0.0.2", alternate))
    ports = group.listen(reactor)
    try:
        yield group
    finally:
        for port in ports:
            port.stopListening()


def free_tcp_port(host: str) -> int:
    """A TCP port free on C{host} right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
