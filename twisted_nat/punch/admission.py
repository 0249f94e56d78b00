"""
Which of a peer's candidates we send to.  A candidate is only the peer's
claim, and a stranger's offer may name any address at all: the broadcast
address, a multicast group, our own loopback services, another family.
Only addresses a peer could really hold are punched (as ICE implementations
filter what they pair), the rest skipped with the reason, never fatal.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import attrs

from twisted_nat.candidates import Candidate

FAMILIES = frozenset({4})
"""The address families of a service with its IPv4 socket alone (and 6 with an IPv6 socket)."""


@attrs.frozen
class Admission:
    """The candidates we will punch, and those skipped with why."""

    kept: tuple[Candidate, ...]
    skipped: tuple[tuple[Candidate, str], ...]


def admit(
    remote: Sequence[Candidate],
    local: Sequence[Candidate],
    families: frozenset[int] = FAMILIES,
) -> Admission:
    """
    Keep the candidates of C{remote} worth a datagram from our sockets
    (of the C{families} we have).  Loopback addresses are kept only when
    one of our own C{local} candidates is on loopback too (a demo, or a
    test, with every party on this machine); link-local ones only when we
    have an address on that same link-local network.
    """
    ours = [ipaddress.ip_address(c.host) for c in local]
    on_loopback = any(a.is_loopback for a in ours)
    link_local: set[int] = {a.version for a in ours if a.is_link_local}
    kept: list[Candidate] = []
    skipped: list[tuple[Candidate, str]] = []
    for candidate in remote:
        reason = _unusable(candidate, families, on_loopback, link_local)
        if reason is None:
            kept.append(candidate)
        else:
            skipped.append((candidate, reason))
    return Admission(tuple(kept), tuple(skipped))


def _unusable(
    candidate: Candidate, families: frozenset[int], on_loopback: bool, link_local: set[int]
) -> str | None:
    try:
        address = ipaddress.ip_address(candidate.host)
    except ValueError:
        return "not an IP address"
    if address.version not in families:
        return f"IPv{address.version}, and we have no IPv{address.version} socket"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return "an IPv4-mapped IPv6 address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _RESERVED_V4:
        return "a broadcast or reserved address"
    if address.is_loopback and not on_loopback:
        return "a loopback address, and we are not on loopback"
    if address.is_link_local and address.version not in link_local:
        return "a link-local address of a link we are not on"
    if not 0 < candidate.port < 65536:
        return "no port"
    return None


_RESERVED_V4 = ipaddress.IPv4Network("240.0.0.0/4")
"""Class E, 255.255.255.255 included: never a host's address."""
