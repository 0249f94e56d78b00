"""
The PCP client (RFC 6887): MAP requests through a L{GatewayExchange},
each answer checked against its request's nonce, the gateway's epoch
followed across renewals.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from twisted_nat.errors import PortMappingError
from twisted_nat.portmap import pcp
from twisted_nat.portmap.client import Grant, IMappingClient, check_external, check_lifetime
from twisted_nat.portmap.epoch import Epoch
from twisted_nat.portmap.exchange import GatewayExchange
from twisted_nat.portmap.values import Mapping, Protocol

Answer = pcp.MapResponse | pcp.NATPMPOnly


def _matching(request: pcp.MapRequest) -> Callable[[bytes], Answer | None]:
    def match(datagram: bytes) -> Answer | None:
        response = pcp.decode(datagram)
        if isinstance(response, pcp.NATPMPOnly) or response.answers(request):
            return response
        return None

    return match


@implementer(IMappingClient)
class PCPClient:
    """
    PCP towards one gateway.  One nonce serves a mapping's whole life (its
    renewals and its deletion, RFC 6887 11.2); answers with another are
    not ours.  C{ADDRESS_MISMATCH} means a NAT between us and the gateway,
    where a mapping on the gateway would not reach us: it fails, and the
    mapper tries the next protocol.
    """

    protocol = Protocol.PCP

    def __init__(
        self,
        clock: IReactorTime,
        exchange: GatewayExchange,
        nonce: Callable[[], bytes] = lambda: os.urandom(pcp.NONCE_SIZE),
    ) -> None:
        self._clock = clock
        self._exchange = exchange
        self._nonce = nonce()
        self._epoch = Epoch()

    def map(self, internal_port: int, lifetime: int, previous: Mapping | None) -> Deferred[Grant]:
        return Deferred.fromCoroutine(self._map(internal_port, lifetime, previous))

    async def _map(self, internal_port: int, lifetime: int, previous: Mapping | None) -> Grant:
        suggested = previous.external if previous is not None else None
        response = await self._ask(internal_port, lifetime, suggested)
        now = self._clock.seconds()
        restarted = self._epoch.observe(now, response.epoch)
        external = check_external(response.external, "the PCP server")
        lifetime = check_lifetime(response.lifetime, "the PCP server")
        mapping = Mapping(Protocol.PCP, external, internal_port, lifetime, now)
        return Grant(mapping, restarted)

    def unmap(self, mapping: Mapping) -> Deferred[None]:
        async def unmap() -> None:
            await self._ask(mapping.internal_port, 0, None)

        return Deferred.fromCoroutine(unmap())

    async def _ask(
        self, internal_port: int, lifetime: int, suggested: tuple[str, int] | None
    ) -> pcp.MapResponse:
        request = pcp.MapRequest(
            self._nonce, self._exchange.local_ip, internal_port, lifetime, suggested
        )
        response: Answer = await self._exchange.ask(request.encode(), _matching(request))
        if isinstance(response, pcp.NATPMPOnly):
            raise PortMappingError("the gateway speaks NAT-PMP, not PCP", pcp.UNSUPPORTED)
        if response.result == pcp.ResultCode.ADDRESS_MISMATCH:
            raise PortMappingError(
                "PCP: ADDRESS_MISMATCH: another NAT lies between us and the gateway",
                response.result,
            )
        if response.result != pcp.ResultCode.SUCCESS:
            raise PortMappingError(
                f"PCP refused: {pcp.result_name(response.result)}", response.result
            )
        return response

    def close(self) -> None:
        self._exchange.close()
