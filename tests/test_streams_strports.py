"""Endpoint strings for peer streams: clientFromString("peer:bob") and serverFromString("peer")."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.interfaces import IStreamClientEndpointStringParserWithReactor
from twisted.internet.protocol import Factory
from twisted.plugin import getPlugins
from twisted.protocols.basic import LineReceiver

from tests.test_streams import connected, world
from twisted_nat.errors import ConfigurationError
from twisted_nat.streams.endpoints import PeerEndpoint, PeerServerEndpoint
from twisted_nat.streams.strports import PeerEndpointParser, publish


class Shout(LineReceiver):
    def lineReceived(self, line: bytes) -> None:
        self.sendLine(line.upper())


class Ask(LineReceiver):
    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def connectionMade(self) -> None:
        self.sendLine(b"hello bob")

    def lineReceived(self, line: bytes) -> None:
        self.lines.append(line)


def test_the_plugin_is_found_by_twisted():
    parsers = list(getPlugins(IStreamClientEndpointStringParserWithReactor))
    assert any(isinstance(p, PeerEndpointParser) for p in parsers)


def test_endpoint_strings_reach_a_peer_through_a_published_service():
    w = world()
    alice, bob, _ = connected(w, None)
    reactor: Any = w.internet
    published = [publish(alice), publish(bob)]
    try:
        server = serverFromString(reactor, "peer:via=bob")
        assert isinstance(server, PeerServerEndpoint)
        port: Any = w.internet.run_until(server.listen(Factory.forProtocol(Shout)))
        client = clientFromString(reactor, "peer:bob:via=alice")
        assert isinstance(client, PeerEndpoint)
        asking: Any = w.internet.run_until(client.connect(Factory.forProtocol(Ask)))
        w.internet.advance(1.0)
        assert asking.lines == [b"HELLO BOB"]
        w.internet.run_until(port.stopListening())
        with pytest.raises(ConfigurationError, match="via=NAME"):
            clientFromString(reactor, "peer:bob")
        published[1].withdraw()
        assert isinstance(clientFromString(reactor, "peer:bob"), PeerEndpoint)
        with pytest.raises(ConfigurationError, match="no service published as 'carol'"):
            clientFromString(reactor, "peer:bob:via=carol")
        with pytest.raises(ValueError, match="peer:NAME"):
            clientFromString(reactor, "peer:bob:extra")
        with pytest.raises(ConfigurationError, match="another service"):
            publish(bob, "alice")
    finally:
        for handle in published:
            handle.withdraw()
        w.stop()
    with pytest.raises(ConfigurationError, match="published: none"):
        clientFromString(reactor, "peer:bob")
