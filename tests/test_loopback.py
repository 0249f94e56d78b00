"""Our client against our server over real sockets on loopback."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor

from tests.netutil import rfc5780_group as listening_group
from twisted_nat.errors import DiscoveryError
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.stun.attributes import ChangeRequest, OtherAddress, ResponseOrigin
from twisted_nat.stun.client import RetransmissionSchedule, STUNClient
from twisted_nat.stun.message import MessageClass, Method, request
from twisted_nat.stun.server import BindingServer

reactor: Any = global_reactor


@pytest.fixture
def plain_server():
    server = BindingServer()
    port = reactor.listenUDP(0, server, interface="127.0.0.1")
    yield server, ("127.0.0.1", port.getHost().port)
    port.stopListening()


@pytest.fixture
def rfc5780_group():
    with listening_group(reactor) as group:
        yield group


@pytest.fixture
def client():
    stun = STUNClient(timeout=3.0, schedule=RetransmissionSchedule(rto=0.1))
    port = reactor.listenUDP(0, stun, interface="127.0.0.1")
    yield stun, ("127.0.0.1", port.getHost().port)
    port.stopListening()


@pytest_twisted.ensureDeferred
async def test_discover_against_our_server(plain_server, client):
    server, server_address = plain_server
    stun, local = client
    result = await stun.discover([("127.0.0.1", 9), server_address])
    assert result.mapped == local
    assert result.server == server_address
    assert result.local == local
    assert server.stats.answered == 1


@pytest_twisted.ensureDeferred
async def test_discover_fails_cleanly_with_no_server(client):
    stun, _ = client
    stun.timeout = 0.5
    with pytest.raises(DiscoveryError):
        await stun.discover([("127.0.0.1", 9)])
    assert stun.pending() == 0


@pytest_twisted.ensureDeferred
async def test_rfc5780_change_request_over_loopback(rfc5780_group, client):
    stun, local = client
    primary = rfc5780_group.primary
    alternate = rfc5780_group.alternate
    response = await stun.request(request(), primary)
    assert response.mapped_address == local
    assert response.message.get(OtherAddress).address == alternate
    changed = await stun.request(
        request(attributes=[ChangeRequest(True, True)]), primary, match_source=False
    )
    assert changed.source == alternate
    assert changed.message.get(ResponseOrigin).address == alternate
    port_only = await stun.request(
        request(attributes=[ChangeRequest(False, True)]), primary, match_source=False
    )
    assert port_only.source == (primary[0], alternate[1])


@pytest_twisted.ensureDeferred
async def test_client_shares_a_socket_through_the_multiplexer(plain_server):
    server, server_address = plain_server
    mux = UDPMultiplexer()
    port = reactor.listenUDP(0, mux, interface="127.0.0.1")
    try:
        stun = STUNClient(timeout=3.0, schedule=RetransmissionSchedule(rto=0.1))
        mux.add_stun(stun, [Method.BINDING], [MessageClass.SUCCESS, MessageClass.ERROR])
        result = await stun.discover([server_address])
        assert result.mapped == ("127.0.0.1", port.getHost().port)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_ipv6_loopback():
    server = BindingServer()
    server_port = reactor.listenUDP(0, server, interface="::1")
    stun = STUNClient(timeout=3.0, schedule=RetransmissionSchedule(rto=0.1))
    client_port = reactor.listenUDP(0, stun, interface="::1")
    try:
        result = await stun.discover([("::1", server_port.getHost().port)])
        assert result.mapped == ("::1", client_port.getHost().port)
    finally:
        server_port.stopListening()
        client_port.stopListening()


@pytest_twisted.ensureDeferred
async def test_host_names_resolve_through_the_reactor(plain_server, client):
    """C{localhost} goes through the reactor's threaded resolver, not a blocking call."""
    server, (_, port) = plain_server
    stun, local = client
    result = await stun.discover([("localhost", port)])
    assert result.server == ("127.0.0.1", port)
    assert result.mapped == local
