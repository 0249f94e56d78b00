"""The STUN server's answers, decided without sockets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakes import RecordingUDPTransport
from twisted_nat.stun.attributes import (
    Attribute,
    ChangedAddress,
    ChangeRequest,
    ErrorCode,
    Fingerprint,
    MappedAddress,
    OtherAddress,
    ResponseOrigin,
    ResponsePort,
    Software,
    SourceAddress,
    UnknownAttribute,
    UnknownAttributes,
    Username,
    XorMappedAddress,
)
from twisted_nat.stun.message import (
    Message,
    MessageClass,
    Method,
    decode,
    encode,
    request,
)
from twisted_nat.stun.server import BindingServer, STUNServerGroup

CLIENT = ("198.51.100.5", 40001)


def plain_server():
    server = BindingServer()
    server.makeConnection(RecordingUDPTransport("192.0.2.1", 3478))
    return server


def group_servers():
    group = STUNServerGroup(("192.0.2.1", 3478), ("192.0.2.2", 3479))
    for (host, port), member in group.members():
        member.makeConnection(RecordingUDPTransport(host, port))
    return group


def answer(server, message_bytes, addr=CLIENT):
    reply = server.handle(message_bytes, addr)
    if reply is None:
        return None
    data, destination, sender = reply
    return decode(data, allow_rfc3489=True), destination, sender


def test_binding_success_has_xor_mapped_software_fingerprint():
    server = plain_server()
    req = request()
    response, destination, sender = answer(server, encode(req))
    assert response.message_class == MessageClass.SUCCESS
    assert response.transaction_id == req.transaction_id
    assert response.get(XorMappedAddress).address == CLIENT
    assert response.get(Software).value == "twisted-nat"
    assert isinstance(response.attributes[-1], Fingerprint)
    assert response.get(OtherAddress) is None
    assert destination == CLIENT
    assert sender is server
    assert server.stats.answered == 1


def test_ipv6_client_gets_ipv6_mapped_address():
    server = plain_server()
    client = ("2001:db8::5", 5000)
    response, destination, _ = answer(server, encode(request()), client)
    assert response.get(XorMappedAddress).address == client


def test_datagram_received_writes_the_answer():
    server = plain_server()
    server.datagramReceived(encode(request()), CLIENT)
    [(data, addr)] = server.transport.written
    assert addr == CLIENT
    assert decode(data).get(XorMappedAddress).address == CLIENT


def test_rfc3489_request_gets_legacy_attributes():
    server = plain_server()
    legacy = Message(Method.BINDING, MessageClass.REQUEST, b"\x01" * 12, (), b"\x99\x88\x77\x66")
    response, _, _ = answer(server, encode(legacy))
    assert response.cookie == b"\x99\x88\x77\x66"
    assert response.get(MappedAddress).address == CLIENT
    assert response.get(SourceAddress).address == ("192.0.2.1", 3478)
    assert response.get(XorMappedAddress) is None
    assert response.get(Fingerprint) is None
    # RFC 3489 clients do not skip padding: text must fill whole words
    software = response.get(Software).value
    assert software.rstrip() == "twisted-nat"
    assert len(software.encode()) % 4 == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"hello",
        b"\xff" * 40,
        b"GET / HTTP/1.1\r\n\r\n",
        b"\x00\x01\x00\x08\x21\x12\xa4\x42" + b"\x00" * 12,  # length claims 8 more bytes
    ],
)
def test_garbage_gets_no_answer(garbage):
    server = plain_server()
    assert server.handle(garbage, CLIENT) is None
    server.datagramReceived(garbage, CLIENT)
    assert server.transport.written == []
    assert server.stats.dropped_garbage == 2


def test_malformed_request_gets_400():
    server = plain_server()
    req = request()
    good = encode(request(attributes=[Username("alice")], transaction_id=req.transaction_id))
    broken = bytearray(good)
    broken[22:24] = b"\x00\xff"  # USERNAME length now overruns the message
    response, destination, _ = answer(server, bytes(broken))
    assert response.message_class == MessageClass.ERROR
    assert response.get(ErrorCode).code == 400
    assert response.transaction_id == req.transaction_id
    assert server.stats.bad_request == 1


def test_unknown_comprehension_required_attribute_gets_420():
    server = plain_server()
    req = request(attributes=[UnknownAttribute(0x7777, b"abcd"), UnknownAttribute(0xC001, b"")])
    response, _, _ = answer(server, encode(req))
    assert response.get(ErrorCode).code == 420
    assert response.get(UnknownAttributes).types == (0x7777,)


def test_change_request_without_second_address_gets_420():
    server = plain_server()
    response, _, _ = answer(server, encode(request(attributes=[ChangeRequest(True, True)])))
    assert response.get(ErrorCode).code == 420
    assert response.get(UnknownAttributes).types == (ChangeRequest.TYPE,)
    # a CHANGE-REQUEST asking for no change is honoured by anyone
    response, _, _ = answer(server, encode(request(attributes=[ChangeRequest(False, False)])))
    assert response.message_class == MessageClass.SUCCESS


def test_responses_and_indications_are_ignored():
    server = plain_server()
    req = request()
    for klass in (MessageClass.SUCCESS, MessageClass.ERROR, MessageClass.INDICATION):
        message = Message(Method.BINDING, klass, req.transaction_id)
        assert server.handle(encode(message), CLIENT) is None
    assert server.stats.dropped_not_request == 3


def test_other_methods_get_400():
    server = plain_server()
    response, _, _ = answer(server, encode(request(Method.ALLOCATE)))
    assert response.get(ErrorCode).code == 400


def test_response_port_redirects_the_answer():
    server = plain_server()
    _, destination, _ = answer(server, encode(request(attributes=[ResponsePort(5555)])))
    assert destination == (CLIENT[0], 5555)


@pytest.mark.parametrize(
    ("change_ip", "change_port", "expected_origin"),
    [
        (False, False, ("192.0.2.1", 3478)),
        (False, True, ("192.0.2.1", 3479)),
        (True, False, ("192.0.2.2", 3478)),
        (True, True, ("192.0.2.2", 3479)),
    ],
)
def test_rfc5780_change_request_picks_the_socket(change_ip, change_port, expected_origin):
    group = group_servers()
    primary = group.member(0, 0)
    req = request(attributes=[ChangeRequest(change_ip, change_port)])
    response, destination, sender = answer(primary, encode(req))
    assert sender.local == expected_origin
    assert response.get(ResponseOrigin).address == expected_origin
    other = (
        "192.0.2.2" if expected_origin[0] == "192.0.2.1" else "192.0.2.1",
        3479 if expected_origin[1] == 3478 else 3478,
    )
    assert response.get(OtherAddress).address == other
    primary.datagramReceived(encode(req), CLIENT)
    [(data, addr)] = sender.transport.written
    assert addr == CLIENT


def test_rfc5780_answers_on_every_socket():
    group = group_servers()
    for (host, port), member in group.members():
        response, _, sender = answer(member, encode(request()))
        assert response.get(ResponseOrigin).address == (host, port)
        assert sender is member
    assert group.stats.answered == 4


def test_rfc5780_legacy_client_gets_changed_address():
    group = group_servers()
    legacy = Message(Method.BINDING, MessageClass.REQUEST, b"\x02" * 12, (), b"\x00\x00\x00\x01")
    response, _, _ = answer(group.member(0, 0), encode(legacy))
    assert response.get(ChangedAddress).address == ("192.0.2.2", 3479)
    assert response.get(SourceAddress).address == ("192.0.2.1", 3478)


def test_group_needs_two_addresses_and_two_ports():
    with pytest.raises(ValueError):
        STUNServerGroup(("192.0.2.1", 3478), ("192.0.2.1", 3479))
    with pytest.raises(ValueError):
        STUNServerGroup(("192.0.2.1", 3478), ("192.0.2.2", 3478))


# --- the plain-request fast path must answer exactly as the full path --------

_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=0, max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    host=st.ip_addresses(v=4).map(str),
    port=st.integers(0, 65535),
    tid=st.binary(min_size=12, max_size=12),
    software=st.none() | _text,
    fingerprint=st.booleans(),
    grouped=st.booleans(),
)
def test_plain_path_answers_byte_for_byte_like_the_full_path(
    host, port, tid, software, fingerprint, grouped
):
    server = group_servers().member(1, 0) if grouped else plain_server()
    attributes: list[Attribute] = [] if software is None else [Software(software)]
    if fingerprint:
        attributes.append(Fingerprint())
    data = encode(request(attributes=attributes, transaction_id=tid))
    fast = server.plain_binding_answer(data, (host, port))
    assert fast is not None
    full = server.handle_any(data, (host, port))
    assert full is not None
    assert fast == full[0]
    assert full[1] == (host, port)


@pytest.mark.parametrize(
    "message",
    [
        request(attributes=[Username("alice")]),
        request(attributes=[ChangeRequest(False, False)]),
        request(Method.ALLOCATE),
        Message(Method.BINDING, MessageClass.INDICATION, b"\x03" * 12),
    ],
)
def test_plain_path_declines_everything_else(message):
    server = plain_server()
    assert server.plain_binding_answer(encode(message), CLIENT) is None
    assert server.plain_binding_answer(encode(request()), ("2001:db8::1", 1)) is None


def test_plain_path_declines_a_bad_fingerprint_which_then_gets_400():
    server = plain_server()
    data = bytearray(encode(request(attributes=[Software("x"), Fingerprint()])))
    data[-1] ^= 1
    assert server.plain_binding_answer(bytes(data), CLIENT) is None
    response, _, _ = answer(server, bytes(data))
    assert response.get(ErrorCode).code == 400


def test_send_errors_are_counted_not_raised():
    class Refusing:
        def sendto(self, data, addr):
            raise ConnectionRefusedError(111, "refused")

    transport: Any = RecordingUDPTransport("192.0.2.1", 3478)
    transport.socket = Refusing()
    server = BindingServer()
    server.makeConnection(transport)
    server.datagramReceived(encode(request()), CLIENT)
    assert server.stats.send_errors == 1
    assert server.stats.answered == 1
