"""
Candidates: the addresses at which a peer might be reached, and their rank.

Every candidate of ours is an address of the one shared socket: a host
candidate is the socket's port on one of the machine's interface addresses,
the server-reflexive candidate is what STUN saw of that socket from
outside, a mapped candidate is the public address the gateway forwards to
the socket by port mapping, and (with TURN) the relayed candidate is a
relay's address.  They are ranked host > mapped > server-reflexive >
relayed, with ICE's priority formula (RFC 8445 5.1.2), so that a direct
path on the same LAN beats one through the NAT (an open port first), which
beats a relay.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Sequence

import attrs

from twisted_nat.address import Address


class CandidateType(enum.Enum):
    HOST = "host"
    PEER_REFLEXIVE = "prflx"
    """Learned during punching: the address a peer's packet really came from."""
    SERVER_REFLEXIVE = "srflx"
    MAPPED = "mapped"
    """
    Our public address by port mapping (PCP, NAT-PMP, UPnP-IGD).  On the
    wire it is server-reflexive, as RFC 8445 5.1.1.2 counts such addresses,
    with a higher priority: peers that know no "mapped" type take it, and
    sign and check it, as it is.
    """
    RELAYED = "relay"

    @property
    def wire(self) -> str:
        """The type a peer reads."""
        return CandidateType.SERVER_REFLEXIVE.value if self is CandidateType.MAPPED else self.value


TYPE_PREFERENCE = {
    CandidateType.HOST: 126,
    CandidateType.PEER_REFLEXIVE: 110,
    CandidateType.MAPPED: 105,
    CandidateType.SERVER_REFLEXIVE: 100,
    CandidateType.RELAYED: 0,
}


def candidate_priority(kind: CandidateType, local_preference: int = 65535) -> int:
    """RFC 8445's formula for component 1."""
    return (TYPE_PREFERENCE[kind] << 24) | ((local_preference & 0xFFFF) << 8) | 255


@attrs.frozen(order=False)
class Candidate:
    """One address at which a peer may be reached, and how much it prefers it."""

    kind: CandidateType
    host: str
    port: int
    priority: int = attrs.field()

    @priority.default
    def _default_priority(self) -> int:
        return candidate_priority(self.kind)

    @property
    def address(self) -> Address:
        return (self.host, self.port)

    def as_json(self) -> dict[str, object]:
        return {
            "type": self.kind.wire,
            "host": self.host,
            "port": self.port,
            "priority": self.priority,
        }

    @classmethod
    def from_json(cls, value: dict[str, object]) -> Candidate:
        """
        The inverse of L{as_json}, but a mapped candidate comes back
        server-reflexive (its priority says the rest); raises C{ValueError}
        for anything malformed.
        """
        try:
            kind = _FROM_WIRE[value["type"]]  # type: ignore[index]
            host = str(value["host"])
            port = value["port"]
            priority = value["priority"]
        except (KeyError, TypeError) as e:
            raise ValueError(f"malformed candidate: {value!r}") from e
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"bad candidate port: {port!r}")
        if not isinstance(priority, int) or not 0 <= priority < 2**32:
            raise ValueError(f"bad candidate priority: {priority!r}")
        ipaddress.ip_address(host)  # raises ValueError for a non-address
        return cls(kind, host, port, priority)


_FROM_WIRE = {kind.wire: kind for kind in CandidateType if kind is not CandidateType.MAPPED}


def interface_addresses(include_loopback: bool = False, ipv6: bool = False) -> list[str]:
    """
    The machine's interface addresses, for host candidates.  Link-local
    IPv6 addresses need a scope and are left out.
    """
    import ifaddr

    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                address = ipaddress.ip_address(ip.ip)
            elif ipv6:
                address = ipaddress.ip_address(ip.ip[0])
            else:
                continue
            if address.is_loopback and not include_loopback:
                continue
            if address.is_link_local or address.is_unspecified:
                continue
            if str(address) not in found:
                found.append(str(address))
    return found


def host_candidates(port: int, addresses: Iterable[str]) -> list[Candidate]:
    """Host candidates for a socket bound to C{port}, one per address, first preferred."""
    return [
        Candidate(CandidateType.HOST, host, port, candidate_priority(CandidateType.HOST, 65535 - i))
        for i, host in enumerate(addresses)
    ]


def rank(candidates: Sequence[Candidate]) -> list[Candidate]:
    """Highest priority first; duplicates of one address keep their best rank only."""
    seen: set[Address] = set()
    ranked: list[Candidate] = []
    for candidate in sorted(candidates, key=lambda c: c.priority, reverse=True):
        if candidate.address not in seen:
            seen.add(candidate.address)
            ranked.append(candidate)
    return ranked
