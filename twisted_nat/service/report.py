"""
What C{--status} shows of a peer: each part of the service read at the
moment of asking, as JSON-ready values.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted_nat.address import format_address
from twisted_nat.candidates import Candidate
from twisted_nat.nat import NATBehavior
from twisted_nat.service.addresses import Addresses
from twisted_nat.service.behavior import BehaviorWatch
from twisted_nat.service.connections import Connections
from twisted_nat.service.ipv6 import IPv6Socket
from twisted_nat.service.portmapping import PortMapping
from twisted_nat.service.punching import Punching
from twisted_nat.service.relays import Relays
from twisted_nat.service.trust import PeerTrust


class Reported(Protocol):
    """The parts of a service that its status reads."""

    ipv6: IPv6Socket
    addresses: Addresses
    nat6: BehaviorWatch
    port_mapping: PortMapping
    relays: Relays
    links: Connections
    trust: PeerTrust
    punching: Punching

    @property
    def behavior(self) -> NATBehavior | None: ...

    @property
    def candidates(self) -> list[Candidate]: ...


def peer_status(name: str | None, local_port: int | None, service: Reported) -> dict[str, Any]:
    """The state of a peer called C{name}, whose shared socket is on C{local_port}."""
    addresses = service.addresses
    behavior = service.behavior
    return {
        "name": name,
        "key": service.trust.key.text,
        "local_port": local_port,
        "local_port6": service.ipv6.local_port,
        "public": format_address(addresses.public.mapped) if addresses.public else None,
        "public6": format_address(addresses.public6.mapped) if addresses.public6 else None,
        "nat": behavior.as_json() if behavior else None,
        "nat6": service.nat6.behavior.as_json() if service.nat6.behavior else None,
        "candidates": [{**c.as_json(), "type": c.kind.value} for c in service.candidates],
        "port_mapping": service.port_mapping.status(),
        "relays": sorted(format_address(a) for a in service.relays.relayed_addresses()),
        "connections": service.links.status(),
        "refused": service.trust.stats.as_json(),
        "limited": dict(sorted(service.punching.refused.counts.items())),
    }
