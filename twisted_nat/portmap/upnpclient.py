"""
The UPnP-IGD client: the gateway found by an SSDP search sent to it, its
description fetched, and port mappings made with SOAP actions, all over
Twisted (L{GatewayExchange} for SSDP, a L{Fetch} for HTTP).

Router errors are handled as widely deployed clients do: 718 (the port
is another host's) tries other external ports, or AddAnyPortMapping where
the service has it; 725 (only permanent leases) asks for lease 0, and
such a mapping is deleted at shutdown like any other.
"""

from __future__ import annotations

import random
from functools import partial

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from twisted_nat.errors import PortMappingError
from twisted_nat.portmap import igd
from twisted_nat.portmap.client import Grant, IMappingClient, check_external
from twisted_nat.portmap.exchange import GatewayExchange
from twisted_nat.portmap.http import Fetch
from twisted_nat.portmap.values import Mapping, Protocol

CONFLICT_TRIES = 4
"""External ports tried in all when each is another host's (718)."""

DESCRIPTION = "twisted-nat"


def _entry(mapping: Mapping) -> list[tuple[str, str]]:
    """The arguments that name a mapping."""
    port = str(mapping.external[1])
    return [("NewRemoteHost", ""), ("NewExternalPort", port), ("NewProtocol", "UDP")]


def _located(gateway_ip: str, datagram: bytes) -> str:
    return igd.location(datagram, gateway_ip)


@implementer(IMappingClient)
class UPnPClient:
    """UPnP-IGD towards one gateway; C{ssdp} is connected to its port 1900."""

    protocol = Protocol.UPNP

    def __init__(
        self,
        clock: IReactorTime,
        ssdp: GatewayExchange,
        fetch: Fetch,
        rng: random.Random | None = None,
    ) -> None:
        self._clock = clock
        self._ssdp = ssdp
        self._fetch = fetch
        self._rng = rng if rng is not None else random.Random()
        self._service: igd.Service | None = None
        self._permanent = False

    @property
    def _gateway_ip(self) -> str:
        return self._ssdp.gateway[0]

    async def _found(self) -> igd.Service:
        if self._service is None:
            search = igd.search(self._gateway_ip)
            where = await self._ssdp.ask(search, partial(_located, self._gateway_ip))
            status, body = await self._fetch(b"GET", where, {}, None)
            if status != 200:
                raise PortMappingError(f"the gateway's description answered HTTP {status}")
            try:
                self._service = igd.find_service(body, where, self._gateway_ip)
            except igd.IGDError as e:
                raise PortMappingError(f"UPnP-IGD: {e}") from None
        return self._service

    async def _call(
        self, service: igd.Service, name: str, arguments: list[tuple[str, str]]
    ) -> dict[str, str] | igd.Fault:
        soap_action, body = igd.action(service, name, arguments)
        headers = {b"Content-Type": b'text/xml; charset="utf-8"', b"SOAPAction": soap_action}
        status, answer = await self._fetch(b"POST", service.control_url, headers, body)
        try:
            return igd.answer(status, answer, name)
        except igd.IGDError as e:
            raise PortMappingError(f"UPnP-IGD {name}: {e}") from None

    async def _must(
        self, service: igd.Service, name: str, arguments: list[tuple[str, str]]
    ) -> dict[str, str]:
        result = await self._call(service, name, arguments)
        if isinstance(result, igd.Fault):
            raise PortMappingError(
                f"UPnP-IGD {name} failed: {result.code} {result.description}", result.code
            )
        return result

    def map(self, internal_port: int, lifetime: int, previous: Mapping | None) -> Deferred[Grant]:
        return Deferred.fromCoroutine(self._map(internal_port, lifetime, previous))

    async def _map(self, internal_port: int, lifetime: int, previous: Mapping | None) -> Grant:
        try:
            return await self._map_once(internal_port, lifetime, previous)
        except PortMappingError as e:
            if self._service is None or e.code is not None:
                raise
        # The gateway answered nothing usable where it was: a restarted one
        # may serve on another port.  Find it again, once.
        self._service = None
        return await self._map_once(internal_port, lifetime, previous)

    async def _map_once(self, internal_port: int, lifetime: int, previous: Mapping | None) -> Grant:
        service = await self._found()
        restarted = previous is not None and not await self._present(service, previous)
        wanted = previous.external[1] if previous is not None else internal_port
        port = await self._add(service, internal_port, wanted, lifetime)
        address = await self._must(service, "GetExternalIPAddress", [])
        external = check_external(
            (address.get("NewExternalIPAddress", ""), port), "the UPnP-IGD gateway"
        )
        lease = 0 if self._permanent else lifetime
        now = self._clock.seconds()
        return Grant(Mapping(Protocol.UPNP, external, internal_port, lease, now), restarted)

    async def _present(self, service: igd.Service, mapping: Mapping) -> bool:
        """Whether the gateway still holds C{mapping} (714 says it forgot it)."""
        found = await self._call(service, "GetSpecificPortMappingEntry", _entry(mapping))
        if isinstance(found, igd.Fault):
            return found.code != igd.NO_SUCH_ENTRY
        return found.get("NewInternalPort") == str(mapping.internal_port)

    async def _add(
        self, service: igd.Service, internal_port: int, wanted: int, lifetime: int
    ) -> int:
        """Map C{wanted} (or a port near it) and return the external port granted."""
        port = wanted
        for _ in range(CONFLICT_TRIES):
            lease = 0 if self._permanent else lifetime
            name = "AddAnyPortMapping" if service.any_port else "AddPortMapping"
            result = await self._call(service, name, self._arguments(internal_port, port, lease))
            if isinstance(result, igd.Fault) and result.code == igd.ONLY_PERMANENT:
                if self._permanent:
                    break
                self._permanent = True
                continue
            if isinstance(result, igd.Fault) and result.code == igd.CONFLICT:
                port = self._rng.randint(1024, 65535)
                continue
            if isinstance(result, igd.Fault):
                raise PortMappingError(
                    f"UPnP-IGD {name} failed: {result.code} {result.description}", result.code
                )
            if service.any_port:
                try:
                    return int(result.get("NewReservedPort", ""))
                except ValueError:
                    raise PortMappingError("UPnP-IGD AddAnyPortMapping named no port") from None
            return port
        raise PortMappingError("UPnP-IGD found no external port to map", igd.CONFLICT)

    def _arguments(
        self, internal_port: int, external_port: int, lease: int
    ) -> list[tuple[str, str]]:
        return [
            ("NewRemoteHost", ""),
            ("NewExternalPort", str(external_port)),
            ("NewProtocol", "UDP"),
            ("NewInternalPort", str(internal_port)),
            ("NewInternalClient", self._ssdp.local_ip),
            ("NewEnabled", "1"),
            ("NewPortMappingDescription", DESCRIPTION),
            ("NewLeaseDuration", str(lease)),
        ]

    def unmap(self, mapping: Mapping) -> Deferred[None]:
        async def unmap() -> None:
            service = await self._found()
            await self._must(service, "DeletePortMapping", _entry(mapping))

        return Deferred.fromCoroutine(unmap())

    def close(self) -> None:
        self._ssdp.close()
