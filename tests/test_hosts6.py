"""Which IPv6 addresses are offered, and where the IPv6 socket binds and whom it asks."""

from __future__ import annotations

import pytest

from twisted_nat.hosts6 import offered, parse_if_inet6
from twisted_nat.service.ipv6 import ipv4_servers, ipv6_interface, ipv6_servers

IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe8000000000000000fc00fffe000001 04 40 20 80     eth0
20010db8000000000000000000000010 04 40 00 01     eth0
20010db8000000000000000000000002 04 40 00 80     eth0
20010db8000000000000000000000003 04 40 00 20     eth0
20010db8000000000000000000000004 04 40 00 40     eth0
20010db8000000000000000000000005 04 40 00 08     eth0
fd000000000000000000000000000002 04 40 00 82     eth0
ff020000000000000000000000000001 04 40 00 80     eth0
00000000000000000000ffffc0000201 04 40 00 80     eth0
not an address line
20010db800000000000000000000000g 04 40 00 80     eth0
"""


def test_stable_global_addresses_first_then_temporary_ones() -> None:
    assert offered(parse_if_inet6(IF_INET6)) == ["2001:db8::2", "fd00::2", "2001:db8::10"]


def test_loopback_only_when_asked() -> None:
    assert offered(parse_if_inet6(IF_INET6), include_loopback=True)[0] == "::1"


def test_flags_are_read() -> None:
    by_address = {str(a.address): a for a in parse_if_inet6(IF_INET6)}
    assert by_address["2001:db8::10"].temporary
    assert not by_address["2001:db8::2"].temporary
    assert by_address["fe80::fc:ff:fe00:1"].interface == "eth0"
    assert len(by_address) == 10, "the malformed lines are skipped"


@pytest.mark.parametrize(
    ("ipv6", "interface", "interface6", "bound"),
    [
        (True, "0.0.0.0", None, "::"),
        (True, "", None, "::"),
        (True, "127.0.0.1", None, None),
        (True, "127.0.0.1", "::1", "::1"),
        (False, "0.0.0.0", None, None),
        (False, "0.0.0.0", "::1", None),
    ],
)
def test_where_the_ipv6_socket_binds(
    ipv6: bool, interface: str, interface6: str | None, bound: str | None
) -> None:
    assert ipv6_interface(ipv6, interface, interface6) == bound


def test_each_socket_asks_the_servers_of_its_family() -> None:
    servers = [("192.0.2.1", 3478), ("2001:db8::1", 3478), ("stun.example.net", 3478)]
    assert ipv4_servers(servers) == [("192.0.2.1", 3478), ("stun.example.net", 3478)]
    assert ipv6_servers(servers) == [("2001:db8::1", 3478), ("stun.example.net", 3478)]
