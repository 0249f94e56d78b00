"""The STUN client's transaction table and discovery, on a Clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.fakes import RecordingUDPTransport
from twisted_nat.errors import (
    DiscoveryError,
    STUNErrorResponse,
    STUNTimeout,
    TransactionCancelled,
)
from twisted_nat.stun.attributes import MappedAddress, UnknownAttribute, XorMappedAddress
from twisted_nat.stun.client import DiscoveryResult, Response, RetransmissionSchedule, STUNClient
from twisted_nat.stun.message import (
    Message,
    MessageClass,
    Method,
    decode,
    encode,
    error_response,
    request,
    response_to,
)
from twisted_nat.turn.attributes import TURN_ATTRIBUTES, Lifetime

SERVER = ("192.0.2.10", 3478)
OTHER = ("192.0.2.20", 3478)


def make_client(**kwargs):
    clock = Clock()
    client = STUNClient(reactor=clock, **kwargs)
    transport = RecordingUDPTransport()
    client.makeConnection(transport)
    return client, clock, transport


def results(d):
    out: list[object] = []
    d.addBoth(out.append)
    return out


def answer(req_bytes: bytes, mapped=("198.51.100.7", 6000), **kw) -> bytes:
    req = decode(req_bytes)
    return encode(response_to(req, [XorMappedAddress(*mapped)], **kw))


def test_schedule_matches_rfc_8489():
    """Sends at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s and gives up at 39.5 s."""
    client, clock, transport = make_client()
    out = results(client.request(request(), SERVER))
    send_times = []
    last = 0
    while not out:
        if len(transport.written) != last:
            send_times.append(clock.seconds())
            last = len(transport.written)
        clock.advance(0.25)
    assert send_times == [0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert clock.seconds() == 39.5
    assert isinstance(out[0], Failure)
    assert out[0].check(STUNTimeout)
    assert out[0].value.attempts == 7
    assert all(addr == SERVER for _, addr in transport.written)
    assert len({data for data, _ in transport.written}) == 1, "retransmissions are identical"
    assert client.pending() == 0
    assert clock.getDelayedCalls() == []


def test_schedule_is_configurable():
    schedule = RetransmissionSchedule(rto=0.1, rc=3, rm=4)
    assert schedule.total == pytest.approx(0.1 + 0.2 + 0.4)
    client, clock, transport = make_client(schedule=schedule)
    out = results(client.request(request(), SERVER))
    clock.advance(0.1)
    clock.advance(0.2)
    assert len(transport.written) == 3
    clock.advance(0.39)
    assert out == []
    clock.advance(0.01)
    assert out[0].check(STUNTimeout)


def test_even_schedule_fits_a_window():
    schedule = RetransmissionSchedule.within(0.4, sends=7)
    assert schedule.total == pytest.approx(0.4)
    client, clock, transport = make_client(schedule=schedule)
    out = results(client.request(request(), SERVER))
    clock.pump([0.05] * 7)
    assert len(transport.written) == 7
    assert out == []
    clock.pump([0.051])  # 0.4 s, give or take float rounding
    assert out[0].check(STUNTimeout)


@pytest.mark.parametrize("bad", [dict(rto=0), dict(rc=0), dict(rm=0), dict(backoff=0.5)])
def test_schedule_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        RetransmissionSchedule(**bad)


def test_each_request_decodes_its_answer_with_its_own_table():
    """
    A client shared by STUN and TURN: a TURN request's answer is decoded
    with the table it was sent with, a Binding answer with STUN's.
    """
    client, clock, transport = make_client()
    binding = results(client.request(request(), SERVER))
    allocate = results(client.request(request(Method.ALLOCATE), SERVER, table=TURN_ATTRIBUTES))
    for data, _ in transport.written[:2]:
        client.datagramReceived(encode(response_to(decode(data), [Lifetime(600)])), SERVER)
    [binding_response], [allocate_response] = binding, allocate
    assert isinstance(binding_response, Response) and isinstance(allocate_response, Response)
    assert type(binding_response.message.attributes[0]) is UnknownAttribute
    assert allocate_response.message.get(Lifetime) == Lifetime(600)


def test_response_fires_and_cancels_timer():
    client, clock, transport = make_client()
    out = results(client.request(request(), SERVER))
    clock.advance(0.5)
    client.datagramReceived(answer(transport.written[0][0]), SERVER)
    [response] = out
    assert isinstance(response, Response)
    assert response.mapped_address == ("198.51.100.7", 6000)
    assert response.attempts == 2
    assert response.elapsed == 0.5
    assert response.source == SERVER
    assert clock.getDelayedCalls() == []
    assert client.stats.responses == 1


def test_mapped_address_fallback_for_legacy_servers():
    client, clock, transport = make_client()
    out = results(client.request(request(), SERVER))
    req = decode(transport.written[0][0])
    client.datagramReceived(encode(response_to(req, [MappedAddress("203.0.113.1", 9)])), SERVER)
    assert out[0].mapped_address == ("203.0.113.1", 9)


def test_response_from_wrong_address_is_dropped():
    client, clock, transport = make_client()
    out = results(client.request(request(), SERVER))
    client.datagramReceived(answer(transport.written[0][0]), OTHER)
    assert out == []
    assert client.stats.dropped_wrong_source == 1
    client.datagramReceived(answer(transport.written[0][0]), SERVER)
    assert isinstance(out[0], Response)


def test_match_source_false_accepts_other_origin():
    """RFC 5780 CHANGE-REQUEST answers come from the server's other address."""
    client, clock, transport = make_client()
    out = results(client.request(request(), SERVER, match_source=False))
    client.datagramReceived(answer(transport.written[0][0]), OTHER)
    assert out[0].source == OTHER


def test_unknown_transaction_and_garbage_are_dropped_and_counted():
    client, clock, transport = make_client()
    out = results(client.request(request(), SERVER))
    client.datagramReceived(
        encode(response_to(request(), [XorMappedAddress("1.2.3.4", 5)])), SERVER
    )
    client.datagramReceived(b"\x00\x01garbage", SERVER)
    client.datagramReceived(b"", SERVER)
    echoed_request = transport.written[0][0]
    client.datagramReceived(echoed_request, SERVER)  # a reflected request is not an answer
    assert out == []
    assert client.stats.dropped_unmatched == 2
    assert client.stats.dropped_malformed == 2


def test_error_response_fails_with_code():
    client, clock, transport = make_client()
    out = results(client.request(request(), SERVER))
    req = decode(transport.written[0][0])
    client.datagramReceived(encode(error_response(req, 420)), SERVER)
    assert out[0].check(STUNErrorResponse)
    assert out[0].value.code == 420
    assert out[0].value.reason == "Unknown Attribute"
    assert clock.getDelayedCalls() == []


def test_integrity_protected_request_and_response():
    key = b"secret"
    client, clock, transport = make_client()
    out = results(client.request(request(), SERVER, key=key))
    req = decode(transport.written[0][0])
    from twisted_nat.stun.attributes import MessageIntegrity
    from twisted_nat.stun.message import check_integrity

    assert check_integrity(req, key)
    unsigned = encode(response_to(req, [XorMappedAddress("1.2.3.4", 5)]))
    forged = encode(response_to(req, [XorMappedAddress("6.6.6.6", 6), MessageIntegrity()]), b"bad")
    client.datagramReceived(unsigned, SERVER)
    client.datagramReceived(forged, SERVER)
    assert out == []
    assert client.stats.dropped_integrity == 2
    signed = encode(response_to(req, [XorMappedAddress("1.2.3.4", 5), MessageIntegrity()]), key)
    client.datagramReceived(signed, SERVER)
    assert out[0].mapped_address == ("1.2.3.4", 5)


def test_cancel_abandons_transaction():
    client, clock, transport = make_client()
    d = client.request(request(), SERVER)
    out = results(d)
    d.cancel()
    assert out[0].check(CancelledError)
    assert client.pending() == 0
    assert clock.getDelayedCalls() == []


def test_stop_fails_pending_transactions():
    client, clock, transport = make_client()
    out = results(client.request(request(), SERVER))
    client.doStop()
    assert out[0].check(TransactionCancelled)
    assert clock.getDelayedCalls() == []


def test_request_before_listening_fails():
    client = STUNClient(reactor=Clock())
    out = results(client.request(request(), SERVER))
    assert out[0].check(TransactionCancelled)


def test_deadline_cuts_the_schedule():
    client, clock, transport = make_client()
    out = results(client.request(request(), SERVER, deadline=2.0))
    clock.pump([0.1] * 19)
    assert out == []
    clock.pump([0.1])
    assert out[0].check(STUNTimeout)
    assert len(transport.written) == 3
    assert clock.getDelayedCalls() == []


# --- discovery -------------------------------------------------------------------


def servers(n):
    return [(f"192.0.2.{i + 1}", 3478) for i in range(n)]


def sent_to(transport, server):
    return [data for data, addr in transport.written if addr == server]


def test_discovery_races_first_servers_and_first_answer_wins():
    s = servers(4)
    client, clock, transport = make_client(stun_servers=s, race=2)
    out = results(client.discover())
    assert {addr for _, addr in transport.written} == {s[0], s[1]}
    clock.advance(0.1)
    client.datagramReceived(answer(sent_to(transport, s[1])[0]), s[1])
    [result] = out
    assert isinstance(result, DiscoveryResult)
    assert result.server == s[1]
    assert result.mapped == ("198.51.100.7", 6000)
    assert result.local == ("0.0.0.0", 40000)
    assert result.rtt == pytest.approx(0.1)
    assert client.pending() == 0
    assert clock.getDelayedCalls() == []
    # the loser's late answer is harmless
    client.datagramReceived(answer(sent_to(transport, s[0])[0]), s[0])
    assert client.stats.dropped_unmatched == 1


def test_discovery_falls_back_when_a_server_fails():
    s = servers(3)
    client, clock, transport = make_client(stun_servers=s, race=1, timeout=60)
    out = results(client.discover())
    req = decode(sent_to(transport, s[0])[0])
    client.datagramReceived(encode(error_response(req, 500)), s[0])
    assert sent_to(transport, s[1]), "next server started at once"
    client.datagramReceived(answer(sent_to(transport, s[1])[0]), s[1])
    assert out[0].server == s[1]
    assert sent_to(transport, s[2]) == []


def test_discovery_times_out_with_every_failure_reported():
    s = servers(3)
    client, clock, transport = make_client(stun_servers=s, race=2, timeout=5.0)
    out = results(client.discover())
    clock.advance(5.0)
    assert out[0].check(DiscoveryError)
    failures = out[0].value.failures
    assert set(failures) == set(s)
    assert isinstance(failures[s[0]], STUNTimeout)
    assert isinstance(failures[s[2]], TransactionCancelled)
    assert client.pending() == 0
    assert clock.getDelayedCalls() == []


def test_discovery_with_no_servers_fails_at_once():
    client, clock, transport = make_client()
    out = results(client.discover())
    assert out[0].check(DiscoveryError)


def test_discovery_cancel_cleans_up():
    client, clock, transport = make_client(stun_servers=servers(2))
    d = client.discover()
    out = results(d)
    d.cancel()
    assert out[0].check(CancelledError)
    assert client.pending() == 0
    assert clock.getDelayedCalls() == []


def test_discovery_resolves_names_without_blocking():
    from twisted.internet.defer import Deferred

    pending: dict[str, Deferred[str]] = {}

    def resolver(name: str) -> Deferred[str]:
        pending[name] = Deferred()
        return pending[name]

    client, clock, transport = make_client(stun_servers=[("stun.example", 3478)], resolver=resolver)
    out = results(client.discover())
    assert transport.written == []
    pending["stun.example"].callback("192.0.2.99")
    assert transport.written[0][1] == ("192.0.2.99", 3478)
    client.datagramReceived(answer(transport.written[0][0]), ("192.0.2.99", 3478))
    assert out[0].server == ("192.0.2.99", 3478)


def test_discovery_resolution_failure_moves_on():
    from twisted.internet import defer

    def resolver(name: str):
        return defer.fail(OSError("no such host"))

    s = [("bad.example", 3478), servers(1)[0]]
    client, clock, transport = make_client(stun_servers=s, race=1, resolver=resolver)
    out = results(client.discover())
    client.datagramReceived(answer(transport.written[0][0]), s[1])
    assert out[0].server == s[1]


def test_response_class_check_messages():
    """A success and an error both end the transaction; indications do not."""
    client, clock, transport = make_client()
    out = results(client.request(request(), SERVER))
    req = decode(transport.written[0][0])
    indication = Message(req.method, MessageClass.INDICATION, req.transaction_id)
    client.datagramReceived(encode(indication), SERVER)
    assert out == []


def test_drops_are_logged_at_debug_level():
    from twisted.logger import LogLevel, globalLogPublisher

    events: list[Any] = []
    observer: Any = events.append
    globalLogPublisher.addObserver(observer)
    try:
        client, clock, transport = make_client()
        client.datagramReceived(b"\x00\x01\x00\x00garbage-garbage!", SERVER)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert client.stats.dropped_malformed == 1
    [event] = [e for e in events if "malformed" in str(e.get("log_format", ""))]
    assert event["log_level"] == LogLevel.debug
    assert event["addr"] == SERVER
