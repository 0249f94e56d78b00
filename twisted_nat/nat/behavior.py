"""
What a NAT does, as values: the mapping and filtering behaviours, the
classic name derived from them by L{classify} (the one place the names are
defined), and L{NATBehavior}, everything one discovery found.  No I/O.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Sequence
from typing import Any

import attrs

from twisted_nat.address import Address, format_address


class MappingBehavior(enum.Enum):
    """How the NAT picks the public endpoint (RFC 4787 section 4.1)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    DESTINATION_DEPENDENT = "destination-dependent"
    """Not endpoint-independent; which of the two dependent kinds was not told apart."""
    UNKNOWN = "unknown"


class FilteringBehavior(enum.Enum):
    """What inbound traffic the NAT lets through (RFC 4787 section 5)."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UNKNOWN = "unknown"


class NATType(enum.Enum):
    """The classic names (RFC 3489's, and what users ask about)."""

    OPEN_INTERNET = "open internet"
    FIREWALLED = "no NAT, firewalled"
    NO_NAT = "no NAT (filtering unknown)"
    FULL_CONE = "full cone"
    RESTRICTED_CONE = "restricted cone"
    PORT_RESTRICTED_CONE = "port-restricted cone"
    CONE = "cone NAT (filtering unknown)"
    SYMMETRIC = "symmetric"
    UDP_BLOCKED = "UDP blocked"
    UNKNOWN = "unknown"


_CONE_BY_FILTERING = {
    FilteringBehavior.ENDPOINT_INDEPENDENT: NATType.FULL_CONE,
    FilteringBehavior.ADDRESS_DEPENDENT: NATType.RESTRICTED_CONE,
    FilteringBehavior.ADDRESS_AND_PORT_DEPENDENT: NATType.PORT_RESTRICTED_CONE,
    FilteringBehavior.UNKNOWN: NATType.CONE,
}


def classify(
    answered: bool,
    nat_present: bool | None,
    mapping: MappingBehavior,
    filtering: FilteringBehavior,
) -> NATType:
    """
    The one rule from measured behaviour to classic name.

        no answer from any server                 -> UDP blocked
        no NAT, filtering endpoint-independent    -> open internet
        no NAT, filtering (address-)dependent     -> no NAT, firewalled
        no NAT, filtering unknown                 -> no NAT (filtering unknown)
        NAT, mapping endpoint-independent, and filtering
            endpoint-independent                  -> full cone
            address-dependent                     -> restricted cone
            address-and-port-dependent            -> port-restricted cone
            unknown                               -> cone NAT (filtering unknown)
        NAT, mapping dependent on the destination -> symmetric
        anything else                             -> unknown
    """
    if not answered:
        return NATType.UDP_BLOCKED
    if nat_present is False:
        if filtering is FilteringBehavior.ENDPOINT_INDEPENDENT:
            return NATType.OPEN_INTERNET
        if filtering is FilteringBehavior.UNKNOWN:
            return NATType.NO_NAT
        return NATType.FIREWALLED
    if nat_present is None:
        return NATType.UNKNOWN
    if mapping is MappingBehavior.ENDPOINT_INDEPENDENT:
        return _CONE_BY_FILTERING[filtering]
    if mapping is MappingBehavior.UNKNOWN:
        return NATType.UNKNOWN
    return NATType.SYMMETRIC


@attrs.frozen
class NATBehavior:
    """
    Everything discovery found, as one value.

    @ivar local: the local endpoint actually used to reach the server (the
        routing decision, not the wildcard the socket was bound to).
    @ivar public: the server-reflexive endpoint of that socket, or None
        when no server answered.
    @ivar hairpinning: whether a packet sent to our own public endpoint
        came back; None when not tested.
    @ivar rtt: the round trip to the server, in seconds.
    @ivar elapsed: how long discovery took, in seconds.
    @ivar binding_lifetime: how long an idle binding survived, when
        measured (L{twisted_nat.nat.measure_binding_lifetime}).
    @ivar port_delta: for a NAT whose mapping depends on the destination,
        the step between the public ports it gave successive new flows,
        when they were close together (sequential allocation: the next
        port can be predicted); None when they looked random.
    @ivar problems: what went wrong with the server or the path, in words.
    """

    local: Address | None
    public: Address | None
    mapping: MappingBehavior
    filtering: FilteringBehavior
    hairpinning: bool | None
    server: Address
    other_address: Address | None = None
    rtt: float | None = None
    elapsed: float = 0.0
    binding_lifetime: float | None = None
    port_delta: int | None = None
    problems: tuple[str, ...] = ()

    @property
    def nat_present(self) -> bool | None:
        if self.public is None or self.local is None:
            return None
        return self.public != self.local

    @property
    def nat_type(self) -> NATType:
        return classify(self.public is not None, self.nat_present, self.mapping, self.filtering)

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary (what C{twisted-nat detect --json} prints)."""

        def endpoint(address: Address | None) -> str | None:
            return None if address is None else format_address(address)

        return {
            "nat_type": self.nat_type.value,
            "nat_present": self.nat_present,
            "public": endpoint(self.public),
            "local": endpoint(self.local),
            "mapping": self.mapping.value,
            "filtering": self.filtering.value,
            "hairpinning": self.hairpinning,
            "server": endpoint(self.server),
            "other_address": endpoint(self.other_address),
            "rtt_ms": None if self.rtt is None else round(self.rtt * 1000, 3),
            "elapsed_ms": round(self.elapsed * 1000, 3),
            "binding_lifetime_s": self.binding_lifetime,
            "port_delta": self.port_delta,
            "problems": list(self.problems),
        }

    def describe(self) -> str:
        """A few lines a person can read."""

        def endpoint(address: Address | None) -> str:
            return "unknown" if address is None else format_address(address)

        hairpin = {True: "yes", False: "no", None: "not tested"}[self.hairpinning]
        lines = [
            f"NAT type:     {self.nat_type.value}",
            f"public:       {endpoint(self.public)}",
            f"local:        {endpoint(self.local)}",
            f"mapping:      {self.mapping.value}",
            f"filtering:    {self.filtering.value}",
            f"hairpinning:  {hairpin}",
            f"server:       {endpoint(self.server)} (other address {endpoint(self.other_address)})",
        ]
        if self.binding_lifetime is not None:
            lines.append(f"binding life: {self.binding_lifetime:.1f} s")
        if self.rtt is not None:
            lines.append(f"round trip:   {self.rtt * 1000:.1f} ms")
        lines.append(f"took:         {self.elapsed * 1000:.0f} ms")
        lines.extend(f"problem:      {problem}" for problem in self.problems)
        return "\n".join(lines)


PREDICTABLE_SPREAD = 256
"""
Public ports of successive new flows within this many of each other look
sequential.  Generous, since a busy NAT gives other hosts' flows the ports
in between; yet three random ports rarely fall this close together.
"""


def port_delta(ports: Sequence[int]) -> int | None:
    """
    The allocation step of a NAT that gave these public ports to new flows
    opened one after the other, if they look sequential: distinct and close
    together, in any order (a flow whose first datagram was lost takes its
    port when the retransmission passes, after a later flow's).  Other
    hosts' flows may take ports in between, each a whole step, so the step
    is the greatest common divisor of the gaps rather than the smallest
    (gaps of 5 and 9 are steps of 1, not of 5).  None when they look random.
    """
    if len(ports) < 2 or len(set(ports)) != len(ports):
        return None
    gaps = [b - a for a, b in itertools.pairwise(sorted(ports))]
    if any(gap <= 0 or gap > PREDICTABLE_SPREAD for gap in gaps):
        return None
    return math.gcd(*gaps)
