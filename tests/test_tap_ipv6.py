"""C{twistd nat}'s IPv6 options: C{peer --ipv6/--interface6} and C{server --address6}."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from twisted_nat.service import NATTraversalService
from twisted_nat.tap import Options, STUNServerService, makeService

PEER = ["peer", "--name", "alice", "--rendezvous", "tcp:host=127.0.0.1:port=8765"]


def peer_of(*arguments: str) -> NATTraversalService:
    options = Options()
    options.parseOptions([*PEER, *arguments])
    service: Any = makeService(options, reactor=Clock())
    [peer] = list(service)
    assert isinstance(peer, NATTraversalService)
    return peer


def test_a_peer_takes_ipv6_where_there_is_some_by_default() -> None:
    settings = peer_of().settings
    assert (settings.ipv6, settings.interface6) == (True, None)


def test_a_peer_can_stay_on_ipv4() -> None:
    assert peer_of("--ipv6", "off").settings.ipv6 is False


def test_a_peer_binds_the_ipv6_address_given() -> None:
    settings = peer_of("--interface6", "2001:db8::7").settings
    assert (settings.ipv6, settings.interface6) == (True, "2001:db8::7")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--ipv6", "maybe"], "--ipv6 must be auto or off"),
        (["--interface6", "192.0.2.1"], "--interface6 is no IPv6 address"),
        (["--interface6", "nowhere"], "not an IP address"),
    ],
)
def test_bad_ipv6_options_end_in_one_line(arguments: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as raised:
        Options().parseOptions([*PEER, *arguments])
    assert message in str(raised.value)


def test_a_server_serves_stun_on_ipv6_too_when_asked() -> None:
    options = Options()
    options.parseOptions(["server", "--address6", "::1", "--no-rendezvous"])
    service: Any = makeService(options, reactor=Clock())
    ipv4, ipv6 = list(service)
    assert isinstance(ipv4, STUNServerService) and isinstance(ipv6, STUNServerService)
    assert ipv4.alternate is not None, "RFC 5780 on IPv4 as before"
    assert (ipv6.primary, ipv6.alternate) == (("::1", 3478), None)


def test_a_server_refuses_an_ipv4_address6() -> None:
    with pytest.raises(SystemExit) as raised:
        Options().parseOptions(["server", "--address6", "127.0.0.1"])
    assert "--address6 is no IPv6 address" in str(raised.value)


def test_a_server_serves_rfc5780_on_ipv6_with_two_addresses() -> None:
    options = Options()
    options.parseOptions(
        ["server", "--address6", "::1", "--alternate-address6", "::2", "--no-rendezvous"]
    )
    service: Any = makeService(options, reactor=Clock())
    _, ipv6 = list(service)
    assert (ipv6.primary, ipv6.alternate) == (("::1", 3478), ("::2", 3479))


def test_an_alternate_address6_alone_is_refused() -> None:
    with pytest.raises(SystemExit) as raised:
        Options().parseOptions(["server", "--alternate-address6", "::2"])
    assert "--alternate-address6 needs --address6" in str(raised.value)
