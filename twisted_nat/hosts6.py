"""
The machine's IPv6 addresses worth offering as host candidates.

A global IPv6 address usually reaches the peer with no NAT at all, only a
stateful firewall that simultaneous PUNCHes open, as they open a NAT.  Of
the addresses an interface holds, link-local ones need a scope a
candidate cannot carry and are left out; so are those the kernel is still
checking (tentative), found duplicated, or retiring (deprecated).  Stable
addresses come before temporary privacy addresses (RFC 8981), which change
daily, so that a connection lasts on the one that does not.  On Linux the
flags are read from C{/proc/net/if_inet6}; elsewhere C{ifaddr} lists the
addresses without them.
"""

from __future__ import annotations

import ipaddress

import attrs

IF_INET6 = "/proc/net/if_inet6"

TEMPORARY = 0x01
DADFAILED = 0x08
DEPRECATED = 0x20
TENTATIVE = 0x40
_UNUSABLE = DADFAILED | DEPRECATED | TENTATIVE


@attrs.frozen
class InterfaceAddress:
    """One IPv6 address of an interface, with the kernel's flags (C{IFA_F_*})."""

    address: ipaddress.IPv6Address
    interface: str
    flags: int = 0

    @property
    def temporary(self) -> bool:
        return bool(self.flags & TEMPORARY)


def parse_if_inet6(text: str) -> list[InterfaceAddress]:
    """
    The lines of C{/proc/net/if_inet6}: address (32 hex digits), interface
    index, prefix length, scope, flags, name.  Lines that do not parse are
    skipped.
    """
    found: list[InterfaceAddress] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 6 or len(fields[0]) != 32:
            continue
        try:
            address = ipaddress.IPv6Address(int(fields[0], 16))
            flags = int(fields[4], 16)
        except ValueError:
            continue
        found.append(InterfaceAddress(address, fields[5], flags))
    return found


def offered(addresses: list[InterfaceAddress], include_loopback: bool = False) -> list[str]:
    """The addresses to offer, best first: stable, then temporary; each once."""
    usable = [
        a
        for a in addresses
        if not (a.flags & _UNUSABLE)
        and not a.address.is_link_local
        and not a.address.is_multicast
        and not a.address.is_unspecified
        and a.address.ipv4_mapped is None
        and (include_loopback or not a.address.is_loopback)
    ]
    result: list[str] = []
    for a in sorted(usable, key=lambda a: a.temporary):
        if str(a.address) not in result:
            result.append(str(a.address))
    return result


def ipv6_host_addresses(include_loopback: bool = False) -> list[str]:
    """The machine's IPv6 addresses to offer (L{offered}), read where the system keeps them."""
    try:
        with open(IF_INET6, encoding="ascii") as f:
            text = f.read()
    except OSError:
        return offered(_from_ifaddr(), include_loopback)
    return offered(parse_if_inet6(text), include_loopback)


def _from_ifaddr() -> list[InterfaceAddress]:
    import ifaddr

    found: list[InterfaceAddress] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):
                try:
                    address = ipaddress.IPv6Address(ip.ip[0].split("%")[0])
                except ValueError:
                    continue
                found.append(InterfaceAddress(address, str(adapter.name)))
    return found
