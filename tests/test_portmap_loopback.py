"""
The port mapping clients over real sockets on loopback: each talks to a
gateway of ours there (a PCP / NAT-PMP responder, an SSDP responder and a
C{twisted.web} UPnP-IGD server), through the real reactor, sockets and
C{Agent}; and HTTP answers too large or too slow are cut off.  miniupnpd,
the real gateway, is in the lab tests (tests/test_portmap_lab.py).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests.test_portmap_wire import DESCRIPTION
from twisted_nat.errors import PortMappingError
from twisted_nat.limits import DropLog
from twisted_nat.portmap import igd
from twisted_nat.portmap.exchange import open_exchange
from twisted_nat.portmap.http import HTTPFetcher
from twisted_nat.portmap.natpmpclient import NATPMPClient
from twisted_nat.portmap.pcpclient import PCPClient
from twisted_nat.portmap.upnpclient import UPnPClient

reactor: Any = global_reactor
LOOPBACK = "127.0.0.1"


class PCPGateway(DatagramProtocol):
    """Answers PCP MAP and NAT-PMP requests, as a gateway speaking both does."""

    def __init__(self) -> None:
        self.mapped: dict[int, int] = {}

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if data[0] == 2 and len(data) == 60:
            lifetime = struct.unpack("!I", data[4:8])[0]
            nonce, internal = data[24:36], struct.unpack("!H", data[40:42])[0]
            self._map(internal, lifetime)
            head = struct.pack("!BBBBII12x", 2, 0x81, 0, 0, lifetime, 1000)
            external = bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 5])
            body = struct.pack("!12sB3xHH16s", nonce, 17, internal, 40000, external)
            self.transport.write(head + body, addr)
        elif data == b"\0\0":
            self.transport.write(
                struct.pack("!BBHI4s", 0, 128, 0, 1000, bytes([203, 0, 113, 5])), addr
            )
        elif data[:2] == b"\0\1":
            internal, _, lifetime = struct.unpack("!HHI", data[4:12])
            self._map(internal, lifetime)
            answer = struct.pack("!BBHIHHI", 0, 129, 0, 1000, internal, 40000, lifetime)
            self.transport.write(answer, addr)

    def _map(self, internal: int, lifetime: int) -> None:
        if lifetime:
            self.mapped[internal] = 40000
        else:
            self.mapped.pop(internal, None)


@pytest.fixture
def gateway() -> Iterator[tuple[PCPGateway, tuple[str, int]]]:
    protocol = PCPGateway()
    port = reactor.listenUDP(0, protocol, interface=LOOPBACK)
    yield protocol, (LOOPBACK, port.getHost().port)
    port.stopListening()


def drops() -> DropLog:
    return DropLog(Logger(), reactor)


@pytest_twisted.ensureDeferred
async def test_pcp_over_loopback(gateway: tuple[PCPGateway, tuple[str, int]]) -> None:
    server, address = gateway
    client = PCPClient(reactor, open_exchange(reactor, reactor, address, drops()))
    try:
        grant = await client.map(4567, 600, None)
        assert grant.mapping.external == ("203.0.113.5", 40000)
        assert server.mapped == {4567: 40000}
        await client.unmap(grant.mapping)
        assert server.mapped == {}
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_natpmp_over_loopback(gateway: tuple[PCPGateway, tuple[str, int]]) -> None:
    server, address = gateway
    client = NATPMPClient(reactor, open_exchange(reactor, reactor, address, drops()))
    try:
        grant = await client.map(4567, 600, None)
        assert grant.mapping.external == ("203.0.113.5", 40000)
        assert server.mapped == {4567: 40000}
        await client.unmap(grant.mapping)
        assert server.mapped == {}
    finally:
        client.close()


@pytest_twisted.ensureDeferred
async def test_nothing_listening_fails_at_once() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((LOOPBACK, 0))
        address = probe.getsockname()
    client = PCPClient(reactor, open_exchange(reactor, reactor, address, drops()))
    try:
        with pytest.raises(PortMappingError, match="refused"):
            await client.map(4567, 600, None)
    finally:
        client.close()


# --- UPnP-IGD ---


class Control(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.mapped: dict[str, str] = {}
        self.actions: list[str] = []

    def render_POST(self, request: Any) -> bytes:
        action = request.getHeader("SOAPAction").strip('"').partition("#")[2]
        self.actions.append(action)
        fields = {e.tag: e.text or "" for e in igd.parse_xml(request.content.read()).iter()}
        if action == "AddAnyPortMapping":
            self.mapped[fields["NewExternalPort"]] = fields["NewInternalPort"]
            inner = f"<NewReservedPort>{fields['NewExternalPort']}</NewReservedPort>"
        elif action == "GetExternalIPAddress":
            inner = "<NewExternalIPAddress>203.0.113.5</NewExternalIPAddress>"
        elif action == "DeletePortMapping":
            del self.mapped[fields["NewExternalPort"]]
            inner = ""
        else:
            request.setResponseCode(500)
            return b"<x/>"
        request.setHeader("Content-Type", 'text/xml; charset="utf-8"')
        return (
            '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
            f'<s:Body><u:{action}Response xmlns:u="urn:x">{inner}</u:{action}Response></s:Body>'
            "</s:Envelope>"
        ).encode()


class Description(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return DESCRIPTION


class Huge(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return b"<x>" + b"y" * (2 * igd.MAX_XML) + b"</x>"


class Streamed(Resource):
    """An answer of unknown length that never ends: chunks until the client goes."""

    isLeaf = True

    def render_GET(self, request: Any) -> object:
        def more() -> None:
            if not request.finished and not request._disconnected:
                request.write(b"y" * 8192)
                reactor.callLater(0.001, more)

        more()
        return NOT_DONE_YET


class Silent(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> object:
        return NOT_DONE_YET


class SSDP(DatagramProtocol):
    def __init__(self, http_port: int) -> None:
        self.http_port = http_port

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        if data.startswith(b"M-SEARCH"):
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nST: " + igd.SEARCH_TARGET.encode() + b"\r\n"
                b"LOCATION: http://127.0.0.1:%d/rootDesc.xml\r\n\r\n" % self.http_port,
                addr,
            )


@pytest.fixture
def igd_server() -> Iterator[tuple[Control, int, int]]:
    root = Resource()
    control = Control()
    root.putChild(b"rootDesc.xml", Description())
    ctl = Resource()
    ctl.putChild(b"IPConn", control)
    root.putChild(b"ctl", ctl)
    root.putChild(b"huge", Huge())
    root.putChild(b"streamed", Streamed())
    root.putChild(b"silent", Silent())
    site = Site(root)
    site.noisy = False
    web = reactor.listenTCP(0, site, interface=LOOPBACK)
    ssdp = reactor.listenUDP(0, SSDP(web.getHost().port), interface=LOOPBACK)
    yield control, web.getHost().port, ssdp.getHost().port
    ssdp.stopListening()
    web.stopListening()


@pytest_twisted.ensureDeferred
async def test_upnp_over_loopback(igd_server: tuple[Control, int, int]) -> None:
    control, _, ssdp_port = igd_server
    ssdp = open_exchange(reactor, reactor, (LOOPBACK, ssdp_port), drops())
    client = UPnPClient(reactor, ssdp, HTTPFetcher(reactor))
    try:
        grant = await client.map(4567, 600, None)
        assert grant.mapping.external == ("203.0.113.5", 4567)
        assert control.mapped == {"4567": "4567"}
        await client.unmap(grant.mapping)
        assert control.mapped == {}
        assert control.actions == ["AddAnyPortMapping", "GetExternalIPAddress", "DeletePortMapping"]
    finally:
        client.close()


@pytest.mark.parametrize("path", ["huge", "streamed"])
@pytest_twisted.ensureDeferred
async def test_answers_over_the_bound_are_cut_off(
    igd_server: tuple[Control, int, int], path: str
) -> None:
    _, http_port, _ = igd_server
    fetch = HTTPFetcher(reactor)
    with pytest.raises(PortMappingError, match=str(igd.MAX_XML)):
        await fetch(b"GET", f"http://{LOOPBACK}:{http_port}/{path}", {}, None)


@pytest_twisted.ensureDeferred
async def test_a_silent_gateway_times_out(igd_server: tuple[Control, int, int]) -> None:
    _, http_port, _ = igd_server
    fetch = HTTPFetcher(reactor, timeout=0.3)
    with pytest.raises(PortMappingError, match="did not answer"):
        await fetch(b"GET", f"http://{LOOPBACK}:{http_port}/silent", {}, None)
