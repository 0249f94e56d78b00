"""
The values port mapping deals in: which protocol, what the gateway granted,
and how the operator chose (C{--port-mapping}).
"""

from __future__ import annotations

import enum

import attrs

from twisted_nat.address import Address, format_address

DEFAULT_LIFETIME = 7200
"""Seconds of lease asked for: RFC 6886's recommendation, which PCP clients commonly use too."""

MIN_RENEWAL = 2.0
"""
The shortest wait before a renewal, whatever lease the gateway grants: a
gateway cannot make us ask more often than this.
"""

PERMANENT_CHECK = 1800.0
"""How often a permanent (lifetime 0) UPnP lease is added again, in case the gateway forgot it."""


class Protocol(enum.Enum):
    PCP = "pcp"
    NATPMP = "natpmp"
    UPNP = "upnp"

    @property
    def label(self) -> str:
        """The protocol's usual name, for logs."""
        return _LABELS[self]


_LABELS = {Protocol.PCP: "PCP", Protocol.NATPMP: "NAT-PMP", Protocol.UPNP: "UPnP-IGD"}


class Mode(enum.Enum):
    """What C{--port-mapping} says: one protocol, all of them in turn, or none."""

    AUTO = "auto"
    PCP = "pcp"
    NATPMP = "natpmp"
    UPNP = "upnp"
    OFF = "off"

    @property
    def protocols(self) -> tuple[Protocol, ...]:
        """
        The protocols to try, in order.  C{auto} asks PCP first (the newest,
        with nonces and epochs), then NAT-PMP on the same port (a PCP server
        answers it, and a NAT-PMP-only one says so to PCP at once), then
        UPnP-IGD, which needs discovery and HTTP and so costs the most.
        """
        if self is Mode.OFF:
            return ()
        if self is Mode.AUTO:
            return (Protocol.PCP, Protocol.NATPMP, Protocol.UPNP)
        return (Protocol(self.value),)


@attrs.frozen
class Mapping:
    """
    A port mapping a gateway granted.

    @ivar protocol: the protocol that got it.
    @ivar external: the public address and port the gateway forwards.
    @ivar internal_port: our socket's port it forwards to.
    @ivar lifetime: seconds granted; 0 for a permanent UPnP lease.
    @ivar granted_at: when it was granted, on the mapper's clock.
    """

    protocol: Protocol
    external: Address
    internal_port: int
    lifetime: int
    granted_at: float

    @property
    def expires_at(self) -> float | None:
        """When the lease ends, or None for a permanent one."""
        return self.granted_at + self.lifetime if self.lifetime else None

    @property
    def renew_at(self) -> float:
        """
        Half the lease (RFC 6886 and RFC 6887 renew well before the end),
        but no sooner than L{MIN_RENEWAL}.
        """
        if not self.lifetime:
            return self.granted_at + PERMANENT_CHECK
        return self.granted_at + max(MIN_RENEWAL, self.lifetime / 2)

    def describe(self) -> str:
        return (
            f"{self.protocol.label} maps {format_address(self.external)} -> "
            f":{self.internal_port}, lease "
            + (f"{self.lifetime} s" if self.lifetime else "permanent")
        )

    def as_json(self, now: float) -> dict[str, object]:
        expires = self.expires_at
        return {
            "protocol": self.protocol.value,
            "external": format_address(self.external),
            "internal_port": self.internal_port,
            "lifetime": self.lifetime,
            "expires_in": None if expires is None else round(max(0.0, expires - now), 1),
            "renews_in": round(max(0.0, self.renew_at - now), 1),
        }
