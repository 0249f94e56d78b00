"""
Port mapping's pure parts: the PCP, NAT-PMP and UPnP-IGD messages, the
epoch test, the default route and the renewal times; no clock, no socket.
"""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_nat.portmap import igd, natpmp, pcp
from twisted_nat.portmap.epoch import Epoch
from twisted_nat.portmap.lease import retry_renewal, search_again
from twisted_nat.portmap.route import default_gateway, parse_ipv4, parse_ipv6
from twisted_nat.portmap.values import Mapping, Mode, Protocol

NONCE = bytes(range(12))


def pcp_answer(
    request: pcp.MapRequest,
    result: int = 0,
    lifetime: int = 3600,
    epoch: int = 100,
    external: tuple[str, int] = ("203.0.113.5", 40000),
    nonce: bytes | None = None,
) -> bytes:
    """A PCP server's MAP answer to C{request}, as RFC 6887 lays it out."""
    head = struct.pack("!BBBBII12x", 2, 0x81, 0, result, lifetime, epoch)
    mapped = bytes(10) + b"\xff\xff" + bytes(int(x) for x in external[0].split("."))
    body = struct.pack(
        "!12sB3xHH16s", nonce or request.nonce, 17, request.internal_port, external[1], mapped
    )
    return head + body


# --- PCP ---


def test_pcp_request_layout() -> None:
    request = pcp.MapRequest(NONCE, "198.51.100.2", 4567, 7200, ("203.0.113.5", 40000))
    data = request.encode()
    assert len(data) == 60
    assert data[:4] == b"\x02\x01\x00\x00"
    assert struct.unpack("!I", data[4:8]) == (7200,)
    assert data[8:24] == bytes(10) + b"\xff\xff" + bytes([198, 51, 100, 2])
    assert data[24:36] == NONCE
    assert data[36] == 17
    assert struct.unpack("!HH", data[40:44]) == (4567, 40000)
    assert data[44:60] == bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 5])


def test_pcp_request_without_suggestion_asks_for_any_address() -> None:
    data = pcp.MapRequest(NONCE, "198.51.100.2", 4567, 0).encode()
    assert struct.unpack("!I", data[4:8]) == (0,)
    assert data[42:44] == b"\0\0"
    assert data[44:60] == bytes(10) + b"\xff\xff" + bytes(4)


def test_pcp_answer_decoded_and_matched() -> None:
    request = pcp.MapRequest(NONCE, "198.51.100.2", 4567, 7200)
    response = pcp.decode(pcp_answer(request))
    assert isinstance(response, pcp.MapResponse)
    assert response.external == ("203.0.113.5", 40000)
    assert (response.lifetime, response.epoch, response.result) == (3600, 100, 0)
    assert response.answers(request)


def test_pcp_answer_with_another_nonce_is_not_ours() -> None:
    request = pcp.MapRequest(NONCE, "198.51.100.2", 4567, 7200)
    response = pcp.decode(pcp_answer(request, nonce=b"x" * 12))
    assert isinstance(response, pcp.MapResponse)
    assert not response.answers(request)


def test_natpmp_answer_to_pcp_says_natpmp_only() -> None:
    assert pcp.decode(b"\x00\x81\x00\x01" + bytes(4)) == pcp.NATPMPOnly()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x02\x81" + bytes(57),  # 59 bytes
        b"\x02\x81" + bytes(59) + b"\0",  # 61: not a multiple of 4
        b"\x02\x81" + bytes(1100),  # too long
        b"\x02\x01" + bytes(58),  # a request, not a response
        b"\x03\x81" + bytes(58),  # another version
        b"\x02\x82" + bytes(58),  # PEER, not MAP
    ],
)
def test_pcp_malformed(data: bytes) -> None:
    with pytest.raises(pcp.PCPDecodeError):
        pcp.decode(data)


@given(st.binary(max_size=1200))
def test_pcp_any_bytes_one_error(data: bytes) -> None:
    with contextlib.suppress(pcp.PCPDecodeError):
        pcp.decode(data)


# --- NAT-PMP ---


def test_natpmp_requests() -> None:
    assert natpmp.address_request() == b"\x00\x00"
    assert natpmp.map_request(4567, 4567, 7200) == struct.pack("!BBHHHI", 0, 1, 0, 4567, 4567, 7200)


def test_natpmp_answers() -> None:
    address = natpmp.decode(struct.pack("!BBHI4s", 0, 128, 0, 77, bytes([203, 0, 113, 5])))
    assert address == natpmp.AddressResponse(0, 77, "203.0.113.5")
    mapped = natpmp.decode(struct.pack("!BBHIHHI", 0, 129, 0, 78, 4567, 40000, 7200))
    assert mapped == natpmp.MapResponse(0, 78, 4567, 40000, 7200)


def test_natpmp_error_as_header_alone() -> None:
    refused = natpmp.decode(struct.pack("!BBHI", 0, 129, 2, 5))
    assert refused == natpmp.MapResponse(2, 5, 0, 0, 0)


@pytest.mark.parametrize(
    "data",
    [
        b"\x00\x80",
        struct.pack("!BBHI4s", 1, 128, 0, 1, bytes(4)),  # version 1
        struct.pack("!BBHI4s", 0, 0, 0, 1, bytes(4)),  # a request
        struct.pack("!BBHI4s", 0, 130, 0, 1, bytes(4)),  # TCP mapping: not asked
        struct.pack("!BBHIHHI", 0, 128, 0, 1, 1, 1, 1),  # address answer of 16 bytes
        struct.pack("!BBHI", 0, 129, 0, 5),  # success needs the body
    ],
)
def test_natpmp_malformed(data: bytes) -> None:
    with pytest.raises(natpmp.NATPMPDecodeError):
        natpmp.decode(data)


@given(st.binary(max_size=64))
def test_natpmp_any_bytes_one_error(data: bytes) -> None:
    with contextlib.suppress(natpmp.NATPMPDecodeError):
        natpmp.decode(data)


# --- the epoch ---


def test_epoch_in_step_with_our_clock() -> None:
    epoch = Epoch()
    assert not epoch.observe(1000.0, 50)
    assert not epoch.observe(1600.0, 650)
    assert not epoch.observe(2200.0, 1252)


def test_epoch_going_backwards_is_a_restart() -> None:
    epoch = Epoch()
    epoch.observe(1000.0, 5000)
    assert epoch.observe(1600.0, 30)


def test_epoch_one_second_back_is_jitter() -> None:
    epoch = Epoch()
    epoch.observe(1000.0, 5000)
    assert not epoch.observe(1000.5, 4999)


def test_epoch_too_slow_is_a_restart() -> None:
    # 600 s passed here, 100 s there: the gateway restarted about 100 s ago.
    epoch = Epoch()
    epoch.observe(1000.0, 500)
    assert epoch.observe(1600.0, 600)


def test_epoch_too_fast_is_a_restart() -> None:
    epoch = Epoch()
    epoch.observe(1000.0, 500)
    assert epoch.observe(1010.0, 900)


def test_epoch_forgotten_starts_again() -> None:
    epoch = Epoch()
    epoch.observe(1000.0, 5000)
    epoch.forget()
    assert not epoch.observe(1600.0, 30)


# --- UPnP-IGD ---

GATEWAY = "198.51.100.1"

SSDP_ANSWER = (
    b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n"
    b"ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"
    b"Location: http://198.51.100.1:5000/rootDesc.xml\r\n\r\n"
)

DESCRIPTION = b"""<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><device><deviceList><device><deviceList><device>
<serviceList>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType>
<controlURL>/ctl/IPConn1</controlURL></service>
<service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:2</serviceType>
<controlURL>/ctl/IPConn</controlURL></service>
</serviceList></device></deviceList></device></deviceList></device></root>"""


def test_search_is_an_m_search_for_a_gateway() -> None:
    text = igd.search(GATEWAY).decode()
    assert text.startswith("M-SEARCH * HTTP/1.1\r\n")
    assert 'MAN: "ssdp:discover"' in text
    assert f"ST: {igd.SEARCH_TARGET}" in text
    assert text.endswith("\r\n\r\n")


def test_ssdp_location() -> None:
    assert igd.location(SSDP_ANSWER, GATEWAY) == "http://198.51.100.1:5000/rootDesc.xml"


@pytest.mark.parametrize(
    "answer",
    [
        SSDP_ANSWER.replace(b"198.51.100.1", b"192.0.2.99"),  # another host
        SSDP_ANSWER.replace(b"http://198.51.100.1", b"http://router.example"),
        SSDP_ANSWER.replace(b"http:", b"file:"),
        SSDP_ANSWER.replace(b"Location", b"X-Where"),
        SSDP_ANSWER.replace(b"200 OK", b"404 No"),
        b"\xff\xfe",
    ],
)
def test_ssdp_answers_refused(answer: bytes) -> None:
    with pytest.raises(igd.IGDError):
        igd.location(answer, GATEWAY)


def test_description_prefers_wanipconnection_2() -> None:
    service = igd.find_service(DESCRIPTION, "http://198.51.100.1:5000/rootDesc.xml", GATEWAY)
    assert service == igd.Service(igd.SERVICES[0], "http://198.51.100.1:5000/ctl/IPConn")
    assert service.any_port


def test_description_with_wanipconnection_1_only() -> None:
    only = DESCRIPTION.replace(b"WANIPConnection:2", b"WANCommonInterfaceConfig:1")
    service = igd.find_service(only, "http://198.51.100.1:5000/rootDesc.xml", GATEWAY)
    assert service.type.endswith("WANIPConnection:1")
    assert not service.any_port


def test_description_pointing_elsewhere_refused() -> None:
    elsewhere = DESCRIPTION.replace(b"/ctl/IPConn<", b"http://192.0.2.99/ctl/IPConn<")
    with pytest.raises(igd.IGDError, match="not on the gateway"):
        igd.find_service(elsewhere, "http://198.51.100.1:5000/rootDesc.xml", GATEWAY)


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;">]>
<root>&lol2;</root>"""


@pytest.mark.parametrize(
    "xml",
    [
        BILLION_LAUGHS,
        BILLION_LAUGHS.replace(b"DOCTYPE", b"doctype"),
        b'<!ENTITY x SYSTEM "file:///etc/passwd"><root/>',
        BILLION_LAUGHS.decode().encode("utf-16"),
        b"<root>" + b"x" * igd.MAX_XML + b"</root>",
        b"<root><unclosed></root>",
    ],
)
def test_hostile_xml_refused(xml: bytes) -> None:
    with pytest.raises(igd.IGDError):
        igd.parse_xml(xml)


def test_action_envelope() -> None:
    service = igd.Service(igd.SERVICES[1], "http://198.51.100.1:5000/ctl/IPConn")
    arguments = [("NewExternalPort", "4567"), ("X", "<&>")]
    header, body = igd.action(service, "AddPortMapping", arguments)
    assert header == b'"urn:schemas-upnp-org:service:WANIPConnection:1#AddPortMapping"'
    root = igd.parse_xml(body)
    values = {e.tag: e.text for e in root.iter() if "}" not in e.tag}
    assert values == {"NewExternalPort": "4567", "X": "<&>"}


def test_action_answer_and_fault() -> None:
    ok = (
        b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        b'<s:Body><u:AddAnyPortMappingResponse xmlns:u="urn:x">'
        b"<NewReservedPort>40001</NewReservedPort></u:AddAnyPortMappingResponse></s:Body>"
        b"</s:Envelope>"
    )
    assert igd.answer(200, ok, "AddAnyPortMapping") == {"NewReservedPort": "40001"}
    fault = (
        b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/">'
        b"<s:Body><s:Fault><faultcode>s:Client</faultcode><detail>"
        b'<UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>718</errorCode>'
        b"<errorDescription>ConflictInMappingEntry</errorDescription></UPnPError>"
        b"</detail></s:Fault></s:Body></s:Envelope>"
    )
    assert igd.answer(500, fault, "AddPortMapping") == igd.Fault(718, "ConflictInMappingEntry")
    with pytest.raises(igd.IGDError):
        igd.answer(500, b"<html/>", "AddPortMapping")
    with pytest.raises(igd.IGDError):
        igd.answer(200, b"<html/>", "AddPortMapping")


# --- the default route ---

ROUTE = (
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    "wlan0\t00000000\t0164A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0\n"
    "eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
    "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
    "tun0\t00000000\t00000000\t0001\t0\t0\t50\t00000000\t0\t0\t0\n"
    "bad line\n"
)

IPV6_ROUTE = (
    "fe800000000000000000000000000000 40 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fe800000000000000000000000000001 00000400 00000002 00000000 00000003     eth0\n"
)


def test_default_route_lowest_metric_with_a_gateway() -> None:
    routes = parse_ipv4(ROUTE)
    assert [(r.gateway, r.interface, r.metric) for r in routes] == [
        ("192.0.2.1", "eth0", 100),
        ("192.168.100.1", "wlan0", 600),
    ]
    assert default_gateway(lambda path: ROUTE) == "192.0.2.1"


def test_no_default_route() -> None:
    assert default_gateway(lambda path: "") is None
    assert default_gateway(lambda path: ROUTE.splitlines()[0]) is None


def test_ipv6_default_route() -> None:
    (route,) = parse_ipv6(IPV6_ROUTE)
    assert (route.gateway, route.interface, route.metric) == ("fe80::1", "eth0", 1024)


# --- values and timing ---


def test_modes() -> None:
    assert Mode.AUTO.protocols == (Protocol.PCP, Protocol.NATPMP, Protocol.UPNP)
    assert Mode.UPNP.protocols == (Protocol.UPNP,)
    assert Mode.OFF.protocols == ()


def test_mapping_renews_at_half_the_lease() -> None:
    mapping = Mapping(Protocol.PCP, ("203.0.113.5", 40000), 4567, 3600, 1000.0)
    assert (mapping.renew_at, mapping.expires_at) == (2800.0, 4600.0)
    assert mapping.describe() == "PCP maps 203.0.113.5:40000 -> :4567, lease 3600 s"
    assert mapping.as_json(2000.0)["expires_in"] == 2600.0


def test_permanent_mapping_is_checked_still() -> None:
    mapping = Mapping(Protocol.UPNP, ("203.0.113.5", 40000), 4567, 0, 1000.0)
    assert mapping.expires_at is None
    assert mapping.renew_at > 1000.0
    assert "permanent" in mapping.describe()


def test_failed_renewals_retry_before_the_end() -> None:
    mapping = Mapping(Protocol.PCP, ("203.0.113.5", 40000), 4567, 100, 0.0)
    now, tries = 50.0, []
    for failures in range(1, 30):
        again = retry_renewal(mapping, now, failures)
        if again is None:
            break
        assert now < again
        tries.append(again)
        now = again
    assert tries and tries[-1] >= 99.0
    assert retry_renewal(mapping, 100.0, 1) is None


def test_searches_slow_down() -> None:
    assert search_again(0.0, 0) < search_again(0.0, 3) <= search_again(0.0, 30) == 3600.0
