"""
The STUN server against hostile traffic: answers go only to the address a
request came from, whatever it asks, and each source IP is answered at a
bounded rate.
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import LogLevel, capturedLogs

from tests.fakes import RecordingUDPTransport
from tests.test_stun_server import CLIENT, group_servers, plain_server
from twisted_nat.stun.attributes import (
    Attribute,
    ChangeRequest,
    MappedAddress,
    OtherAddress,
    ResponseOrigin,
    ResponsePort,
    UnknownAttribute,
    XorMappedAddress,
)
from twisted_nat.stun.message import Message, MessageClass, Method, encode, request
from twisted_nat.stun.server import BindingServer, STUNServerGroup
from twisted_nat.stun.sourcelimit import SourceLimit

VICTIM = ("203.0.113.66", 53)


def every_write(group: STUNServerGroup) -> list[tuple[bytes, tuple[str, int]]]:
    written = []
    for _, member in group.members():
        written.extend(member.transport.written)
    return written


def response_address_attribute(host: str, port: int) -> Attribute:
    """RFC 3489's RESPONSE-ADDRESS (0x0002): answer there instead; a reflection vector."""
    value = struct.pack("!BBH", 0, 1, port) + socket.inet_aton(host)
    return UnknownAttribute(0x0002, value)


def test_response_port_changes_only_the_port():
    server = plain_server()
    req = request(attributes=[ResponsePort(VICTIM[1])])
    server.datagramReceived(encode(req), CLIENT)
    [(_, destination)] = server.transport.written
    assert destination == (CLIENT[0], VICTIM[1])


@pytest.mark.parametrize(
    "attributes",
    [
        [response_address_attribute(*VICTIM)],
        [response_address_attribute(*VICTIM), ResponsePort(VICTIM[1])],
        [XorMappedAddress(*VICTIM), MappedAddress(*VICTIM)],
        [ResponseOrigin(*VICTIM), OtherAddress(*VICTIM)],
    ],
)
@pytest.mark.parametrize("legacy", [False, True])
def test_no_attribute_sends_the_answer_to_another_ip(attributes, legacy):
    group = group_servers()
    req = request(attributes=attributes)
    if legacy:
        req = Message(Method.BINDING, MessageClass.REQUEST, b"\x03" * 12, req.attributes, b"\0" * 4)
    for _, member in group.members():
        member.datagramReceived(encode(req), CLIENT)
    written = every_write(group)
    assert len(written) == 4
    assert {host for _, (host, _) in written} == {CLIENT[0]}


@pytest.mark.parametrize("change_ip", [False, True])
@pytest.mark.parametrize("change_port", [False, True])
def test_change_request_answers_go_to_the_source_from_the_changed_socket(change_ip, change_port):
    group = group_servers()
    primary = group.member(0, 0)
    primary.datagramReceived(
        encode(request(attributes=[ChangeRequest(change_ip, change_port)])), CLIENT
    )
    expected = group.member(int(change_ip), int(change_port))
    assert expected.transport.written[0][1] == CLIENT
    assert len(every_write(group)) == 1
    # with RESPONSE-PORT too: the changed socket, the source IP, the asked port
    req = request(attributes=[ChangeRequest(change_ip, change_port), ResponsePort(VICTIM[1])])
    primary.datagramReceived(encode(req), CLIENT)
    assert expected.transport.written[-1][1] == (CLIENT[0], VICTIM[1])
    assert len(every_write(group)) == 2


@settings(max_examples=200, deadline=None)
@given(
    host=st.ip_addresses(v=4).map(str),
    port=st.integers(0, 65535),
    change=st.tuples(st.booleans(), st.booleans()),
    response_port=st.none() | st.integers(0, 65535),
)
def test_whatever_a_request_names_the_answer_goes_to_its_source_ip(
    host, port, change, response_port
):
    group = group_servers()
    attributes: list[Attribute] = [
        response_address_attribute(host, port),
        XorMappedAddress(host, port),
        ChangeRequest(*change),
    ]
    if response_port is not None:
        attributes.append(ResponsePort(response_port))
    for (_, _), member in group.members():
        member.datagramReceived(encode(request(attributes=attributes)), CLIENT)
    assert {destination[0] for _, destination in every_write(group)} == {CLIENT[0]}


# --- the per-source rate limit ---


def limited_server(clock: Clock, rate: float = 10, burst: float = 20, **kw: int) -> BindingServer:
    server = BindingServer(limit=SourceLimit(clock, rate, burst, **kw))
    server.makeConnection(RecordingUDPTransport("192.0.2.1", 3478))
    return server


def test_a_source_is_answered_for_its_burst_then_at_its_rate():
    clock = Clock()
    server = limited_server(clock)
    for _ in range(50):
        server.datagramReceived(encode(request()), CLIENT)
    assert len(server.transport.written) == 20
    assert server.stats.rate_limited == 30
    assert server.limit.drops.counts["rate"] == 30
    clock.advance(1.0)
    for _ in range(50):
        server.datagramReceived(encode(request()), CLIENT)
    assert len(server.transport.written) == 30, "ten more after one second at 10/s"


def test_sources_are_limited_apart_and_ports_do_not_matter():
    clock = Clock()
    server = limited_server(clock, rate=1, burst=3)
    for port in range(10):
        server.datagramReceived(encode(request()), (CLIENT[0], port))
        server.datagramReceived(encode(request()), ("198.51.100.6", port))
    assert [addr[0] for _, addr in server.transport.written].count(CLIENT[0]) == 3
    assert [addr[0] for _, addr in server.transport.written].count("198.51.100.6") == 3


def test_garbage_pays_too():
    clock = Clock()
    server = limited_server(clock, rate=1, burst=5)
    for _ in range(5):
        server.datagramReceived(b"garbage", CLIENT)
    server.datagramReceived(encode(request()), CLIENT)
    assert server.transport.written == []
    assert server.stats.dropped_garbage == 5
    assert server.stats.rate_limited == 1


def test_the_sockets_of_a_group_share_one_limit():
    clock = Clock()
    group = STUNServerGroup(
        ("192.0.2.1", 3478), ("192.0.2.2", 3479), limit=SourceLimit(clock, 1, 4)
    )
    for (host, port), member in group.members():
        member.makeConnection(RecordingUDPTransport(host, port))
    for _ in range(3):
        for _, member in group.members():
            member.datagramReceived(encode(request()), CLIENT)
    assert len(every_write(group)) == 4
    assert group.stats.rate_limited == 8


def test_a_flood_from_forged_sources_is_bounded_in_memory():
    clock = Clock()
    server = limited_server(clock, rate=1, burst=2, max_sources=100)
    for i in range(1000):
        server.datagramReceived(encode(request()), (f"10.0.{i // 256}.{i % 256}", 1))
    assert len(server.limit.buckets) == 100
    assert len(server.transport.written) == 100
    assert server.limit.drops.counts == {"sources": 900}
    # once their buckets have refilled, old sources make room for new ones
    clock.advance(2.0)
    server.datagramReceived(encode(request()), CLIENT)
    assert server.transport.written[-1][1] == CLIENT
    assert len(server.limit.buckets) == 100


def test_drops_are_logged_at_a_bounded_rate():
    clock = Clock()
    server = limited_server(clock, rate=1, burst=1)
    with capturedLogs() as events:
        for _ in range(10_000):
            server.datagramReceived(encode(request()), CLIENT)
    warnings = [e for e in events if e["log_level"] == LogLevel.warn]
    assert server.stats.rate_limited == 9_999
    assert 1 <= len(warnings) <= 5, "the drop log's burst, however many drops"
