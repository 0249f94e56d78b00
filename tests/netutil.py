"""Helpers for tests that use real sockets on loopback."""

from __future__ import annotations

import socket


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
