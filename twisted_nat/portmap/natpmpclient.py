"""
The NAT-PMP client (RFC 6886): the external address, then the UDP
mapping, through a L{GatewayExchange}; the gateway's epoch followed across
renewals.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from twisted_nat.errors import PortMappingError
from twisted_nat.portmap import natpmp
from twisted_nat.portmap.client import Grant, IMappingClient, check_external, check_lifetime
from twisted_nat.portmap.epoch import Epoch
from twisted_nat.portmap.exchange import GatewayExchange
from twisted_nat.portmap.values import Mapping, Protocol


def _address(datagram: bytes) -> natpmp.AddressResponse | None:
    response = natpmp.decode(datagram)
    return response if isinstance(response, natpmp.AddressResponse) else None


def _mapping(internal_port: int) -> Callable[[bytes], natpmp.MapResponse | None]:
    def match(datagram: bytes) -> natpmp.MapResponse | None:
        response = natpmp.decode(datagram)
        if isinstance(response, natpmp.MapResponse) and (
            response.result or response.internal_port == internal_port
        ):
            return response
        return None

    return match


def _check(result: int, what: str) -> None:
    if result != natpmp.ResultCode.SUCCESS:
        raise PortMappingError(f"NAT-PMP refused {what}: {natpmp.result_name(result)}", result)


@implementer(IMappingClient)
class NATPMPClient:
    """NAT-PMP towards one gateway."""

    protocol = Protocol.NATPMP

    def __init__(self, clock: IReactorTime, exchange: GatewayExchange) -> None:
        self._clock = clock
        self._exchange = exchange
        self._epoch = Epoch()

    def map(self, internal_port: int, lifetime: int, previous: Mapping | None) -> Deferred[Grant]:
        return Deferred.fromCoroutine(self._map(internal_port, lifetime, previous))

    async def _map(self, internal_port: int, lifetime: int, previous: Mapping | None) -> Grant:
        address = await self._exchange.ask(natpmp.address_request(), _address)
        _check(address.result, "the external address")
        restarted = self._epoch.observe(self._clock.seconds(), address.epoch)
        suggested = previous.external[1] if previous is not None else internal_port
        request = natpmp.map_request(internal_port, suggested, lifetime)
        granted = await self._exchange.ask(request, _mapping(internal_port))
        _check(granted.result, "the mapping")
        now = self._clock.seconds()
        restarted = self._epoch.observe(now, granted.epoch) or restarted
        external = (address.external_ip, granted.external_port)
        check_external(external, "the NAT-PMP server")
        lifetime = check_lifetime(granted.lifetime, "the NAT-PMP server")
        mapping = Mapping(Protocol.NATPMP, external, internal_port, lifetime, now)
        return Grant(mapping, restarted)

    def unmap(self, mapping: Mapping) -> Deferred[None]:
        async def unmap() -> None:
            request = natpmp.map_request(mapping.internal_port, 0, 0)
            granted = await self._exchange.ask(request, _mapping(mapping.internal_port))
            _check(granted.result, "the deletion")

        return Deferred.fromCoroutine(unmap())

    def close(self) -> None:
        self._exchange.close()
