"""
The clients of each protocol towards the default gateway, on real
sockets: the L{ClientFactory} a service's L{PortMapper} uses.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime, IReactorUDP

from twisted_nat.errors import PortMappingError
from twisted_nat.limits import DropLog
from twisted_nat.portmap import igd, natpmp, pcp
from twisted_nat.portmap.client import IMappingClient
from twisted_nat.portmap.exchange import open_exchange
from twisted_nat.portmap.http import HTTPFetcher
from twisted_nat.portmap.mapper import ClientFactory
from twisted_nat.portmap.natpmpclient import NATPMPClient
from twisted_nat.portmap.pcpclient import PCPClient
from twisted_nat.portmap.route import default_gateway
from twisted_nat.portmap.upnpclient import UPnPClient
from twisted_nat.portmap.values import Protocol


def gateway_clients(
    reactor: IReactorTime,
    drops: DropLog,
    gateway: Callable[[], str | None] = default_gateway,
) -> ClientFactory:
    """
    Clients on C{reactor} (which must provide C{IReactorUDP} and
    C{IReactorTCP} too) towards the gateway C{gateway()} names at each
    search; what they drop is counted in C{drops}.
    """
    udp: IReactorUDP = reactor  # type: ignore[assignment]

    def client(protocol: Protocol) -> IMappingClient:
        found = gateway()
        if found is None:
            raise PortMappingError("no default gateway")
        if protocol is Protocol.PCP:
            return PCPClient(reactor, open_exchange(udp, reactor, (found, pcp.PORT), drops))
        if protocol is Protocol.NATPMP:
            return NATPMPClient(reactor, open_exchange(udp, reactor, (found, natpmp.PORT), drops))
        ssdp = open_exchange(udp, reactor, (found, igd.SSDP_PORT), drops)
        return UPnPClient(reactor, ssdp, HTTPFetcher(reactor))

    return client
