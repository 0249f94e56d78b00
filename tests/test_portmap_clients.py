"""
The port mapping clients on C{task.Clock}: a fake gateway answers (or
not) through a fake connected datagram transport, and a fake HTTP fetch
plays the UPnP-IGD gateway.
"""

from __future__ import annotations

import struct

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import Logger

from tests.test_portmap_wire import pcp_answer
from twisted_nat.errors import PortMappingError
from twisted_nat.limits import DropLog
from twisted_nat.portmap import pcp
from twisted_nat.portmap.client import Grant
from twisted_nat.portmap.exchange import SCHEDULE, GatewayExchange
from twisted_nat.portmap.natpmpclient import NATPMPClient
from twisted_nat.portmap.pcpclient import PCPClient
from twisted_nat.portmap.values import Mapping, Protocol

GATEWAY = ("198.51.100.1", 5351)
OURS = "198.51.100.2"


class ConnectedTransport:
    """A connected UDP transport that records what is written."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.peer: tuple[str, int] | None = None
        self.stopped = False

    def connect(self, host: str, port: int) -> None:
        self.peer = (host, port)

    def getHost(self) -> IPv4Address:
        return IPv4Address("UDP", OURS, 40000)

    def write(self, data: bytes, addr: object = None) -> None:
        assert addr is None
        self.written.append(data)

    def stopListening(self) -> None:
        self.stopped = True


def exchange(
    clock: Clock, gateway: tuple[str, int] = GATEWAY
) -> tuple[GatewayExchange, ConnectedTransport]:
    drops = DropLog(Logger(), clock)
    protocol = GatewayExchange(clock, gateway, drops)
    transport = ConnectedTransport()
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    return protocol, transport


def results(d: Deferred) -> list[object]:  # type: ignore[type-arg]
    out: list[object] = []
    d.addBoth(out.append)
    return out


# --- the exchange ---


def test_exchange_is_connected_to_the_gateway() -> None:
    protocol, transport = exchange(Clock())
    assert transport.peer == GATEWAY
    assert protocol.local_ip == OURS


def test_retransmissions_are_bounded() -> None:
    clock = Clock()
    protocol, transport = exchange(clock)
    got = results(protocol.ask(b"hello", lambda data: data))
    clock.pump([w for w in SCHEDULE])
    assert len(transport.written) == len(SCHEDULE)
    (error,) = got
    assert isinstance(error.value, PortMappingError)  # type: ignore[attr-defined]
    assert clock.getDelayedCalls() == []


def test_only_the_gateway_is_heard() -> None:
    clock = Clock()
    protocol, transport = exchange(clock)
    got = results(protocol.ask(b"hello", lambda data: data if data == b"yes" else None))
    protocol.datagramReceived(b"yes", ("198.51.100.9", 5351))
    protocol.datagramReceived(b"yes", ("198.51.100.1", 5350))
    protocol.datagramReceived(b"no", GATEWAY)
    assert got == []
    protocol.datagramReceived(b"yes", GATEWAY)
    assert got == [b"yes"]
    assert protocol._drops.counts == {"stranger": 2, "unmatched": 1}
    assert clock.getDelayedCalls() == []


def test_malformed_answers_dropped_and_counted() -> None:
    clock = Clock()
    protocol, _ = exchange(clock)

    def match(data: bytes) -> bytes:
        raise ValueError("bad")

    got = results(protocol.ask(b"hello", match))
    protocol.datagramReceived(b"junk", GATEWAY)
    protocol.datagramReceived(b"junk", GATEWAY)
    assert got == []
    assert protocol._drops.counts == {"malformed": 2}
    protocol.datagramReceived(b"late", GATEWAY)
    clock.pump(SCHEDULE)
    assert isinstance(got[0].value, PortMappingError)  # type: ignore[attr-defined]
    protocol.datagramReceived(b"later", GATEWAY)
    assert protocol._drops.counts["unasked"] == 1


def test_refused_port_fails_at_once() -> None:
    clock = Clock()
    protocol, _ = exchange(clock)
    got = results(protocol.ask(b"hello", lambda data: data))
    protocol.connectionRefused()
    assert "refused" in str(got[0].value)  # type: ignore[attr-defined]
    assert clock.getDelayedCalls() == []


# --- PCP ---


def test_pcp_maps_and_checks_the_nonce() -> None:
    clock = Clock()
    clock.advance(1000)
    protocol, transport = exchange(clock)
    client = PCPClient(clock, protocol, nonce=lambda: b"n" * 12)
    got = results(client.map(4567, 7200, None))
    request = pcp.MapRequest(b"n" * 12, OURS, 4567, 7200)
    assert transport.written == [request.encode()]
    protocol.datagramReceived(pcp_answer(request, nonce=b"x" * 12), GATEWAY)
    assert got == []
    protocol.datagramReceived(pcp_answer(request), GATEWAY)
    (grant,) = got
    assert isinstance(grant, Grant)
    assert grant.mapping == Mapping(Protocol.PCP, ("203.0.113.5", 40000), 4567, 3600, 1000.0)
    assert not grant.gateway_restarted


def test_pcp_renewal_notices_a_restart() -> None:
    clock = Clock()
    protocol, transport = exchange(clock)
    client = PCPClient(clock, protocol, nonce=lambda: b"n" * 12)
    first = results(client.map(4567, 7200, None))
    request = pcp.MapRequest(b"n" * 12, OURS, 4567, 7200)
    protocol.datagramReceived(pcp_answer(request, epoch=5000), GATEWAY)
    mapping = first[0].mapping  # type: ignore[attr-defined]
    clock.advance(1800)
    renewal = results(client.map(4567, 7200, mapping))
    renewed = pcp.MapRequest(b"n" * 12, OURS, 4567, 7200, mapping.external)
    assert transport.written[-1] == renewed.encode()
    protocol.datagramReceived(pcp_answer(renewed, epoch=12), GATEWAY)
    assert renewal[0].gateway_restarted  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("answer", "code", "words"),
    [
        (b"\x00\x81\x00\x01" + bytes(4), 1, "NAT-PMP"),
        (None, 12, "ADDRESS_MISMATCH"),
        (None, 2, "NOT_AUTHORIZED"),
    ],
)
def test_pcp_refusals(answer: bytes | None, code: int, words: str) -> None:
    clock = Clock()
    protocol, _ = exchange(clock)
    client = PCPClient(clock, protocol, nonce=lambda: b"n" * 12)
    got = results(client.map(4567, 7200, None))
    request = pcp.MapRequest(b"n" * 12, OURS, 4567, 7200)
    protocol.datagramReceived(answer or pcp_answer(request, result=code), GATEWAY)
    error = got[0].value  # type: ignore[attr-defined]
    assert isinstance(error, PortMappingError)
    assert error.code == code and words in str(error)


def test_pcp_refuses_an_unusable_address() -> None:
    clock = Clock()
    protocol, _ = exchange(clock)
    client = PCPClient(clock, protocol, nonce=lambda: b"n" * 12)
    got = results(client.map(4567, 7200, None))
    request = pcp.MapRequest(b"n" * 12, OURS, 4567, 7200)
    protocol.datagramReceived(pcp_answer(request, external=("0.0.0.0", 40000)), GATEWAY)
    assert isinstance(got[0].value, PortMappingError)  # type: ignore[attr-defined]


def test_pcp_unmap_asks_for_lifetime_zero() -> None:
    clock = Clock()
    protocol, transport = exchange(clock)
    client = PCPClient(clock, protocol, nonce=lambda: b"n" * 12)
    mapping = Mapping(Protocol.PCP, ("203.0.113.5", 40000), 4567, 3600, 0.0)
    got = results(client.unmap(mapping))
    request = pcp.MapRequest(b"n" * 12, OURS, 4567, 0)
    assert transport.written == [request.encode()]
    protocol.datagramReceived(pcp_answer(request, lifetime=0), GATEWAY)
    assert got == [None]


# --- NAT-PMP ---


def natpmp_address(epoch: int) -> bytes:
    return struct.pack("!BBHI4s", 0, 128, 0, epoch, bytes([203, 0, 113, 5]))


def natpmp_mapped(
    epoch: int, internal: int = 4567, external: int = 40000, result: int = 0
) -> bytes:
    return struct.pack("!BBHIHHI", 0, 129, result, epoch, internal, external, 3600)


def test_natpmp_maps_and_follows_the_epoch() -> None:
    clock = Clock()
    protocol, transport = exchange(clock)
    client = NATPMPClient(clock, protocol)
    got = results(client.map(4567, 7200, None))
    assert transport.written == [b"\0\0"]
    protocol.datagramReceived(natpmp_address(5000), GATEWAY)
    assert transport.written[-1] == struct.pack("!BBHHHI", 0, 1, 0, 4567, 4567, 7200)
    protocol.datagramReceived(natpmp_mapped(5000, internal=9999), GATEWAY)
    assert got == []
    protocol.datagramReceived(natpmp_mapped(5000), GATEWAY)
    mapping = got[0].mapping  # type: ignore[attr-defined]
    assert mapping.external == ("203.0.113.5", 40000) and mapping.lifetime == 3600
    clock.advance(1800)
    renewal = results(client.map(4567, 7200, mapping))
    protocol.datagramReceived(natpmp_address(3), GATEWAY)
    assert transport.written[-1] == struct.pack("!BBHHHI", 0, 1, 0, 4567, 40000, 7200)
    protocol.datagramReceived(natpmp_mapped(3), GATEWAY)
    assert renewal[0].gateway_restarted  # type: ignore[attr-defined]


def test_natpmp_refusal() -> None:
    clock = Clock()
    protocol, _ = exchange(clock)
    client = NATPMPClient(clock, protocol)
    got = results(client.map(4567, 7200, None))
    protocol.datagramReceived(natpmp_address(5), GATEWAY)
    protocol.datagramReceived(struct.pack("!BBHI", 0, 129, 2, 5), GATEWAY)
    error = got[0].value  # type: ignore[attr-defined]
    assert isinstance(error, PortMappingError) and error.code == 2


def test_a_refusal_during_the_write_ends_the_request() -> None:
    clock = Clock()
    protocol, transport = exchange(clock)
    original = transport.write

    def refusing(data: bytes, addr: object = None) -> None:
        original(data, addr)
        protocol.connectionRefused()  # as Twisted's connected UDP port does on ECONNREFUSED

    transport.write = refusing  # type: ignore[method-assign]
    got = results(protocol.ask(b"hello", lambda data: data))
    assert "refused" in str(got[0].value)  # type: ignore[attr-defined]
    assert clock.getDelayedCalls() == []


def test_a_socket_closed_under_the_request_ends_it() -> None:
    clock = Clock()
    protocol, _ = exchange(clock)
    got = results(protocol.ask(b"hello", lambda data: data))
    protocol.doStop()  # the reactor closed the port (an ICMP error, with epoll)
    assert "refused" in str(got[0].value)  # type: ignore[attr-defined]
    assert clock.getDelayedCalls() == []
    with pytest.raises(PortMappingError):
        protocol.ask(b"again", lambda data: data)


def test_a_lost_socket_is_opened_again_for_the_next_request() -> None:
    clock = Clock()
    drops = DropLog(Logger(), clock)
    transports: list[ConnectedTransport] = []

    def reopen(protocol: GatewayExchange) -> None:
        transports.append(ConnectedTransport())
        protocol.makeConnection(transports[-1])  # type: ignore[arg-type]

    protocol = GatewayExchange(clock, GATEWAY, drops, reopen=reopen)
    reopen(protocol)
    results(protocol.ask(b"hello", lambda data: data))
    protocol.doStop()
    got = results(protocol.ask(b"again", lambda data: data))
    assert len(transports) == 2 and transports[1].written == [b"again"]
    protocol.datagramReceived(b"yes", GATEWAY)
    assert got == [b"yes"]
    protocol.close()
    assert transports[1].stopped


def test_pcp_refuses_a_lease_of_no_lifetime() -> None:
    clock = Clock()
    protocol, _ = exchange(clock)
    client = PCPClient(clock, protocol, nonce=lambda: b"n" * 12)
    got = results(client.map(4567, 7200, None))
    request = pcp.MapRequest(b"n" * 12, OURS, 4567, 7200)
    protocol.datagramReceived(pcp_answer(request, lifetime=0), GATEWAY)
    assert "no lifetime" in str(got[0].value)  # type: ignore[attr-defined]


def test_a_gateway_cannot_make_us_renew_often() -> None:
    mapping = Mapping(Protocol.PCP, ("203.0.113.5", 40000), 4567, 1, 100.0)
    assert mapping.renew_at == 102.0
