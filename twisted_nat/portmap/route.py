"""
The default gateway, from the kernel's routing tables (Linux's
C{/proc/net/route} and C{/proc/net/ipv6_route}): where PCP, NAT-PMP and
SSDP requests go.  Parsing is pure; reading takes a reader that tests
replace.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path

import attrs

RTF_UP = 0x1
RTF_GATEWAY = 0x2


@attrs.frozen
class Route:
    """A default route: its gateway, interface and metric."""

    gateway: str
    interface: str
    metric: int


def parse_ipv4(text: str) -> list[Route]:
    """The default routes of a C{/proc/net/route} table, lowest metric first."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 8:
            continue
        interface, destination, gateway, flags, _, _, metric, mask = fields[:8]
        try:
            if int(destination, 16) or int(mask, 16):
                continue
            if int(flags, 16) & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY:
                continue
            address = ipaddress.IPv4Address(bytes.fromhex(gateway)[::-1])
            routes.append(Route(str(address), interface, int(metric)))
        except ValueError:
            continue
    return sorted(routes, key=lambda r: r.metric)


def parse_ipv6(text: str) -> list[Route]:
    """
    The default routes of a C{/proc/net/ipv6_route} table, lowest metric
    first.  Their gateways are usually link-local: use them with the
    route's interface as scope.
    """
    routes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 10:
            continue
        destination, prefix, _, _, nexthop, metric, _, _, flags, interface = fields
        try:
            if int(destination, 16) or int(prefix, 16) or not int(nexthop, 16):
                continue
            if int(flags, 16) & (RTF_UP | RTF_GATEWAY) != RTF_UP | RTF_GATEWAY:
                continue
            address = ipaddress.IPv6Address(bytes.fromhex(nexthop))
            routes.append(Route(str(address), interface, int(metric, 16)))
        except ValueError:
            continue
    return sorted(routes, key=lambda r: r.metric)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="ascii", errors="replace")
    except OSError:
        return ""


def default_gateway(read: Callable[[str], str] = _read) -> str | None:
    """The IPv4 default gateway (the shared socket is IPv4), or None without one."""
    routes = parse_ipv4(read("/proc/net/route"))
    return routes[0].gateway if routes else None


def default_gateway6(read: Callable[[str], str] = _read) -> Route | None:
    """The IPv6 default route, or None without one."""
    routes = parse_ipv6(read("/proc/net/ipv6_route"))
    return routes[0] if routes else None
