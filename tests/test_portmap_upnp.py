"""
The UPnP-IGD client on C{task.Clock}: SSDP through a fake connected
transport, and a fake HTTP fetch playing the gateway's description and
SOAP actions, router errors (718, 725, 714) included.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from tests.test_portmap_clients import ConnectedTransport, exchange, results
from tests.test_portmap_wire import DESCRIPTION, SSDP_ANSWER
from twisted_nat.errors import PortMappingError
from twisted_nat.portmap.upnpclient import UPnPClient
from twisted_nat.portmap.values import Mapping, Protocol


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
