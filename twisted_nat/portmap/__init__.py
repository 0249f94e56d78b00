"""
Port mapping: asking the gateway to forward a public port to our shared
socket, by PCP (RFC 6887), NAT-PMP (RFC 6886) or UPnP-IGD, so that peers
behind hard NATs can reach us directly (L{PortMapper}).
"""

from twisted_nat.portmap.client import Grant, IMappingClient
from twisted_nat.portmap.gateway import gateway_clients
from twisted_nat.portmap.mapper import ClientFactory, PortMapper
from twisted_nat.portmap.route import default_gateway
from twisted_nat.portmap.values import DEFAULT_LIFETIME, Mapping, Mode, Protocol

__all__ = [
    "DEFAULT_LIFETIME",
    "ClientFactory",
    "Grant",
    "IMappingClient",
    "Mapping",
    "Mode",
    "PortMapper",
    "Protocol",
    "default_gateway",
    "gateway_clients",
]
