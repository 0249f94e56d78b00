"""
The port mapping clients and the mapper on C{task.Clock}: a fake gateway
answers (or not) through a fake connected datagram transport, a fake HTTP
fetch plays the UPnP-IGD gateway, and fake clients drive the mapper.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger
from zope.interface import implementer

from tests.test_portmap_wire import DESCRIPTION, SSDP_ANSWER, pcp_answer
from twisted_nat.errors import PortMappingError
from twisted_nat.limits import DropLog
from twisted_nat.portmap import pcp
from twisted_nat.portmap.client import Grant, IMappingClient
from twisted_nat.portmap.exchange import SCHEDULE, GatewayExchange
from twisted_nat.portmap.mapper import PortMapper
from twisted_nat.portmap.natpmpclient import NATPMPClient
from twisted_nat.portmap.pcpclient import PCPClient
from twisted_nat.portmap.upnpclient import UPnPClient
from twisted_nat.portmap.values import Mapping, Mode, Protocol

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


# --- UPnP-IGD ---


def soap_ok(name: str, **values: str) -> bytes:
    inner = "".join(f"<{k}>{v}</{k}>" for k, v in values.items())
    return (
        '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        f'<s:Body><u:{name}Response xmlns:u="urn:x">{inner}</u:{name}Response></s:Body>'
        "</s:Envelope>"
    ).encode()


def soap_fault(code: int) -> bytes:
    return (
        '<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        "<s:Body><s:Fault><detail><UPnPError><errorCode>"
        f"{code}</errorCode><errorDescription>e</errorDescription></UPnPError></detail>"
        "</s:Fault></s:Body></s:Envelope>"
    ).encode()


class FakeIGD:
    """A gateway's HTTP side: the description, and scripted SOAP answers per action."""

    def __init__(self, description: bytes = DESCRIPTION) -> None:
        self.description = description
        self.script: dict[str, list[tuple[int, bytes]]] = {}
        self.calls: list[tuple[str, bytes]] = []

    def __call__(
        self, method: bytes, url: str, headers: dict[bytes, bytes], body: bytes | None
    ) -> Deferred[tuple[int, bytes]]:
        if method == b"GET":
            return succeed((200, self.description))
        name = headers[b"SOAPAction"].decode().strip('"').partition("#")[2]
        self.calls.append((name, body or b""))
        answers = self.script.get(name)
        if not answers:
            return fail(PortMappingError(f"{name} not scripted"))
        return succeed(answers.pop(0))


def upnp(fetch: FakeIGD) -> tuple[UPnPClient, Clock, ConnectedTransport]:
    clock = Clock()
    ssdp, transport = exchange(clock, ("198.51.100.1", 1900))
    client = UPnPClient(clock, ssdp, fetch)
    original = ssdp.ask

    def answered(request: bytes, match: Callable[[bytes], object]) -> Deferred[object]:
        d = original(request, match)
        ssdp.datagramReceived(SSDP_ANSWER, ("198.51.100.1", 1900))
        return d

    ssdp.ask = answered  # type: ignore[method-assign,assignment]
    return client, clock, transport


def test_upnp_any_port_mapping() -> None:
    fetch = FakeIGD()
    fetch.script["AddAnyPortMapping"] = [
        (200, soap_ok("AddAnyPortMapping", NewReservedPort="40001"))
    ]
    fetch.script["GetExternalIPAddress"] = [
        (200, soap_ok("GetExternalIPAddress", NewExternalIPAddress="203.0.113.5"))
    ]
    client, _, transport = upnp(fetch)
    got = results(client.map(4567, 7200, None))
    assert transport.written[0].startswith(b"M-SEARCH")
    mapping = got[0].mapping  # type: ignore[attr-defined]
    assert mapping.external == ("203.0.113.5", 40001) and mapping.lifetime == 7200
    body = fetch.calls[0][1]
    assert b"<NewInternalClient>198.51.100.2</NewInternalClient>" in body
    assert b"<NewLeaseDuration>7200</NewLeaseDuration>" in body


def test_upnp_conflict_tries_another_port() -> None:
    fetch = FakeIGD(DESCRIPTION.replace(b"WANIPConnection:2", b"Other:1"))
    fetch.script["AddPortMapping"] = [(500, soap_fault(718)), (200, soap_ok("AddPortMapping"))]
    fetch.script["GetExternalIPAddress"] = [
        (200, soap_ok("GetExternalIPAddress", NewExternalIPAddress="203.0.113.5"))
    ]
    client, _, _ = upnp(fetch)
    got = results(client.map(4567, 7200, None))
    mapping = got[0].mapping  # type: ignore[attr-defined]
    first, second = (body for name, body in fetch.calls if name == "AddPortMapping")
    assert b"<NewExternalPort>4567</NewExternalPort>" in first
    assert b"<NewExternalPort>4567</NewExternalPort>" not in second
    assert f"<NewExternalPort>{mapping.external[1]}</NewExternalPort>".encode() in second


def test_upnp_conflicts_give_up() -> None:
    fetch = FakeIGD(DESCRIPTION.replace(b"WANIPConnection:2", b"Other:1"))
    fetch.script["AddPortMapping"] = [(500, soap_fault(718))] * 10
    client, _, _ = upnp(fetch)
    got = results(client.map(4567, 7200, None))
    assert isinstance(got[0].value, PortMappingError)  # type: ignore[attr-defined]
    assert len(fetch.calls) == 4


def test_upnp_only_permanent_leases() -> None:
    fetch = FakeIGD()
    fetch.script["AddAnyPortMapping"] = [
        (500, soap_fault(725)),
        (200, soap_ok("AddAnyPortMapping", NewReservedPort="4567")),
    ]
    fetch.script["GetExternalIPAddress"] = [
        (200, soap_ok("GetExternalIPAddress", NewExternalIPAddress="203.0.113.5"))
    ]
    client, _, _ = upnp(fetch)
    got = results(client.map(4567, 7200, None))
    mapping = got[0].mapping  # type: ignore[attr-defined]
    assert mapping.lifetime == 0
    assert b"<NewLeaseDuration>0</NewLeaseDuration>" in fetch.calls[1][1]
    fetch.script["DeletePortMapping"] = [(200, soap_ok("DeletePortMapping"))]
    assert results(client.unmap(mapping)) == [None]


def test_upnp_renewal_notices_a_forgotten_mapping() -> None:
    fetch = FakeIGD()
    fetch.script["GetSpecificPortMappingEntry"] = [(500, soap_fault(714))]
    fetch.script["AddAnyPortMapping"] = [
        (200, soap_ok("AddAnyPortMapping", NewReservedPort="40001"))
    ]
    fetch.script["GetExternalIPAddress"] = [
        (200, soap_ok("GetExternalIPAddress", NewExternalIPAddress="203.0.113.5"))
    ]
    client, _, _ = upnp(fetch)
    previous = Mapping(Protocol.UPNP, ("203.0.113.5", 40001), 4567, 7200, 0.0)
    got = results(client.map(4567, 7200, previous))
    assert got[0].gateway_restarted  # type: ignore[attr-defined]
    assert b"<NewExternalPort>40001</NewExternalPort>" in fetch.calls[1][1]


# --- the mapper ---


@implementer(IMappingClient)
class FakeClient:
    """A client whose answers the test scripts: a Grant, an error, or a Deferred."""

    def __init__(self, protocol: Protocol, clock: Clock) -> None:
        self.protocol = protocol
        self.clock = clock
        self.answers: list[object] = []
        self.maps: list[Mapping | None] = []
        self.unmapped: list[Mapping] = []
        self.closed = False
        self.pending: list[Deferred[Grant]] = []

    def grant(self, port: int = 40000, lifetime: int = 100, restarted: bool = False) -> Grant:
        mapping = Mapping(
            self.protocol, ("203.0.113.5", port), 4567, lifetime, self.clock.seconds()
        )
        return Grant(mapping, restarted)

    def map(self, internal_port: int, lifetime: int, previous: Mapping | None) -> Deferred[Grant]:
        self.maps.append(previous)
        answer = self.answers.pop(0) if self.answers else PortMappingError("no answer")
        if isinstance(answer, Exception):
            return fail(answer)
        if callable(answer):
            return succeed(answer())
        assert isinstance(answer, Deferred)
        self.pending.append(answer)
        return answer

    def unmap(self, mapping: Mapping) -> Deferred[None]:
        self.unmapped.append(mapping)
        return succeed(None)

    def close(self) -> None:
        self.closed = True
        for pending in self.pending:
            if not pending.called:
                pending.errback(PortMappingError("port mapping stopped"))


def mapper(
    mode: Mode = Mode.AUTO,
) -> tuple[PortMapper, Clock, dict[Protocol, FakeClient], list[tuple[object, object]]]:
    clock = Clock()
    clients = {p: FakeClient(p, clock) for p in Protocol}
    changes: list[tuple[object, object]] = []
    made = PortMapper(
        clock, mode, clients.__getitem__, 4567, lambda o, n: changes.append((o, n)), 100
    )
    return made, clock, clients, changes


def test_auto_tries_pcp_then_natpmp_then_upnp() -> None:
    made, clock, clients, changes = mapper()
    clients[Protocol.PCP].answers = [PortMappingError("no PCP")]
    clients[Protocol.NATPMP].answers = [PortMappingError("no NAT-PMP")]
    upnp_client = clients[Protocol.UPNP]
    upnp_client.answers = [upnp_client.grant]
    made.start()
    clock.advance(0)
    assert made.mapping is not None and made.mapping.protocol is Protocol.UPNP
    assert clients[Protocol.PCP].closed and clients[Protocol.NATPMP].closed
    assert changes == [(None, made.mapping)]
    status = made.status()
    assert status["failures"] == {"pcp": "no PCP", "natpmp": "no NAT-PMP"}
    assert status["mapping"]["protocol"] == "upnp"  # type: ignore[index]


def test_renews_at_half_the_lease_and_restores_after_a_restart() -> None:
    made, clock, clients, changes = mapper(Mode.PCP)
    client = clients[Protocol.PCP]
    client.answers = [client.grant, client.grant, lambda: client.grant(port=40002, restarted=True)]
    made.start()
    clock.advance(0)
    first = made.mapping
    clock.advance(49)
    assert len(client.maps) == 1
    clock.advance(1)
    assert client.maps == [None, first]
    assert len(changes) == 1  # the same address: nothing to tell
    clock.advance(50)
    assert made.restores == 1
    assert made.mapping is not None and made.mapping.external[1] == 40002
    renewed = Mapping(Protocol.PCP, ("203.0.113.5", 40000), 4567, 100, 50.0)
    assert changes[-1] == (renewed, made.mapping)


def test_a_lapsed_mapping_is_dropped_and_searched_again() -> None:
    made, clock, clients, changes = mapper(Mode.NATPMP)
    client = clients[Protocol.NATPMP]
    client.answers = [client.grant]
    made.start()
    clock.advance(0)
    mapping = made.mapping
    for _ in range(40):
        clock.advance(5)
        if made.mapping is None:
            break
    assert made.mapping is None and clock.seconds() >= 100
    assert changes[-1] == (mapping, None)
    assert client.closed


def test_no_gateway_searches_again_later() -> None:
    made, clock, clients, _ = mapper(Mode.PCP)
    made.start()
    clock.advance(0)
    assert made.mapping is None and len(clients[Protocol.PCP].maps) == 1
    clock.advance(59)
    assert len(clients[Protocol.PCP].maps) == 1
    clock.advance(1)
    assert len(clients[Protocol.PCP].maps) == 2


def test_stop_deletes_the_mapping() -> None:
    made, clock, clients, changes = mapper(Mode.PCP)
    client = clients[Protocol.PCP]
    client.answers = [client.grant]
    made.start()
    clock.advance(0)
    mapping = made.mapping
    assert results(made.stop()) == [None]
    assert client.unmapped == [mapping] and client.closed
    assert changes[-1] == (mapping, None)
    assert clock.getDelayedCalls() == []


def test_stop_during_a_search_ends_it() -> None:
    made, clock, clients, _ = mapper(Mode.PCP)
    client = clients[Protocol.PCP]
    pending: Deferred[Grant] = Deferred()
    client.answers = [pending]
    made.start()
    clock.advance(0)
    stopped = results(made.stop())
    assert client.closed
    assert stopped == [None] and made.mapping is None


def test_off_does_nothing() -> None:
    made, clock, clients, _ = mapper(Mode.OFF)
    made.start()
    clock.advance(100)
    assert all(not c.maps for c in clients.values())


def test_upnp_finds_a_moved_gateway_again() -> None:
    fetch = FakeIGD()
    fetch.script["AddAnyPortMapping"] = [
        (200, soap_ok("AddAnyPortMapping", NewReservedPort="40001"))
    ] * 2
    fetch.script["GetExternalIPAddress"] = [
        (200, soap_ok("GetExternalIPAddress", NewExternalIPAddress="203.0.113.5"))
    ] * 2
    client, _, transport = upnp(fetch)
    first = results(client.map(4567, 7200, None))[0].mapping  # type: ignore[attr-defined]
    # The restarted gateway: its old control URL fails, then it has forgotten the mapping.
    fetch.script["GetSpecificPortMappingEntry"] = [(500, soap_fault(714))]
    original = fetch.__call__
    broken = [True]

    def moved(
        method: bytes, url: str, headers: dict[bytes, bytes], body: bytes | None
    ) -> Deferred[tuple[int, bytes]]:
        if broken and method == b"POST":
            broken.clear()
            return fail(PortMappingError("connection refused"))
        return original(method, url, headers, body)

    client._fetch = moved
    renewal = results(client.map(4567, 7200, first))
    assert renewal[0].gateway_restarted  # type: ignore[attr-defined]
    assert sum(1 for w in transport.written if w.startswith(b"M-SEARCH")) == 2


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


def test_failures_are_those_of_the_last_search() -> None:
    made, clock, clients, _ = mapper(Mode.AUTO)
    made.start()
    clock.advance(0)
    assert set(made.failures) == set(Protocol)
    natpmp_client = clients[Protocol.NATPMP]
    natpmp_client.answers = [natpmp_client.grant]
    clock.advance(60)
    assert made.mapping is not None and set(made.failures) == {Protocol.PCP}
