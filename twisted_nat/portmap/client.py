"""
What every port mapping protocol's client does for the mapper: map a
port (or renew its mapping), and delete the mapping.
"""

from __future__ import annotations

import ipaddress

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from twisted_nat.address import Address, format_address
from twisted_nat.errors import PortMappingError
from twisted_nat.portmap.values import Mapping


@attrs.frozen
class Grant:
    """
    A gateway's answer to a mapping request.

    @ivar gateway_restarted: the gateway shows it lost its mappings since
        we last heard from it (its epoch went wrong, or our mapping was
        gone), so the mapping had to be made again.
    """

    mapping: Mapping
    gateway_restarted: bool = False


class IMappingClient(Interface):
    """A client of one port mapping protocol, towards one gateway."""

    protocol = Attribute("the L{twisted_nat.portmap.values.Protocol} it speaks")

    def map(internal_port: int, lifetime: int, previous: Mapping | None) -> Deferred[Grant]:
        """
        Map UDP C{internal_port} for C{lifetime} seconds, asking for
        C{previous}'s external address again when given (a renewal); fails
        with L{PortMappingError}.
        """

    def unmap(mapping: Mapping) -> Deferred[None]:
        """Delete C{mapping}; fails with L{PortMappingError}."""

    def close() -> None:
        """Release the client's sockets; what is under way fails."""


def check_lifetime(granted: int, what: str) -> int:
    """C{granted} if it is a lease: 0 from PCP or NAT-PMP would mean none at all."""
    if granted <= 0:
        raise PortMappingError(f"{what} granted a mapping of no lifetime")
    return granted


def check_external(external: Address, what: str) -> Address:
    """
    C{external} if a peer could send to it: a gateway claiming an
    unspecified, loopback or multicast address, or port 0, is refused.
    """
    host, port = external
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise PortMappingError(f"{what} named no IP address: {host!r}") from None
    if address.is_unspecified or address.is_loopback or address.is_multicast or not port:
        raise PortMappingError(f"{what} granted an unusable address {format_address(external)}")
    return external
