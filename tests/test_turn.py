"""
The TURN client on a Clock: attributes, ChannelData framing, the long-term
credential dance, refresh timers, permissions, channels, data both ways,
errors, and the stream (TCP/TLS) framing.

A small fake server answers from the bytes the client writes, the way
coturn would; its answers come back a round trip later on the same Clock,
so every timer runs exactly as it would on a reactor.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from tests.fakes import RecordingUDPTransport
from twisted_nat.errors import (
    ChannelDataDecodeError,
    ConfigurationError,
    STUNDecodeError,
    STUNTimeout,
    TURNAllocationClosed,
    TURNAuthenticationError,
    TURNError,
    TURNNoPermission,
    TURNQuotaError,
    TURNUnavailable,
)
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.stun.attributes import (
    PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
    Attribute,
    MessageIntegrity,
    MessageIntegritySHA256,
    Nonce,
    PasswordAlgorithm,
    PasswordAlgorithms,
    Realm,
    UseCandidate,
    Username,
    XorMappedAddress,
)
from twisted_nat.stun.client import RetransmissionSchedule, STUNClient
from twisted_nat.stun.credentials import long_term_key
from twisted_nat.stun.message import (
    Message,
    MessageClass,
    Method,
    check_integrity,
    decode,
    encode,
    error_response,
    request,
    response_to,
    with_integrity,
)
from twisted_nat.turn import (
    CHANNEL_NUMBERS,
    TURN_ATTRIBUTES,
    AllocationState,
    ChannelData,
    ChannelNumber,
    Data,
    DontFragment,
    EvenPort,
    Lifetime,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    StreamFramer,
    TURNClient,
    TURNStreamProtocol,
    XorPeerAddress,
    XorRelayedAddress,
    decode_channel_data,
    encode_channel_data,
)
from twisted_nat.turn.channel import is_channel_data, pad_for_stream
from twisted_nat.turn.peers import CHANNEL_REFRESH, PERMISSION_REFRESH
from twisted_nat.turn.transactions import turn_error

SERVER = ("192.0.2.1", 3478)
CLIENT = ("198.51.100.2", 40000)
RELAYED = ("192.0.2.1", 50000)
PEER = ("203.0.113.9", 7000)
OTHER_PEER = ("203.0.113.10", 7001)
USER, PASSWORD, REALM = "alice", "secret", "example.org"
RTT = 0.01


def results(d: Any) -> list[Any]:
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def bare(*attributes: Attribute) -> Message:
    return Message(Method.ALLOCATE, MessageClass.REQUEST, b"\x01" * 12, attributes)


# --- attributes ----------------------------------------------------------------------

SAMPLES = [
    ChannelNumber(0x4001),
    Lifetime(600),
    XorPeerAddress("203.0.113.9", 7000),
    XorPeerAddress("2001:db8::9", 7000),
    Data(b"hello, peer"),
    Data(b""),
    XorRelayedAddress("192.0.2.1", 50000),
    RequestedAddressFamily(2),
    EvenPort(reserve=True),
    EvenPort(),
    RequestedTransport(),
    DontFragment(),
    ReservationToken(b"12345678"),
]


@pytest.mark.parametrize("attribute", SAMPLES, ids=repr)
def test_turn_attribute_round_trip(attribute: Attribute) -> None:
    message = bare(attribute)
    data = encode(message)
    assert decode(data, table=TURN_ATTRIBUTES) == message
    assert encode(decode(data, table=TURN_ATTRIBUTES)) == data


def test_turn_attribute_wire_layout() -> None:
    """The value fields of RFC 8656 section 18, byte by byte."""
    tid = b"\x01" * 12
    assert ChannelNumber(0x4001).encode_value(tid) == bytes.fromhex("4001 0000")
    assert Lifetime(600).encode_value(tid) == bytes.fromhex("00000258")
    assert RequestedTransport().encode_value(tid) == bytes([17, 0, 0, 0])
    assert RequestedAddressFamily(2).encode_value(tid) == bytes([2, 0, 0, 0])
    assert EvenPort(reserve=True).encode_value(tid) == b"\x80"
    assert encode(bare(EvenPort()))[20:] == bytes.fromhex("0018 0001 00 000000")
    assert encode(bare(DontFragment()))[20:] == bytes.fromhex("001a 0000")
    relayed = XorRelayedAddress("192.0.2.1", 50000).encode_value(tid)
    assert relayed == XorMappedAddress("192.0.2.1", 50000).encode_value(tid)


@pytest.mark.parametrize(
    ("code", "value"),
    [
        (0x000C, b"\x40\x00"),  # CHANNEL-NUMBER too short
        (0x000D, b"\x00\x00\x02"),  # LIFETIME too short
        (0x0017, b"\x03\x00\x00\x00"),  # unknown family
        (0x0018, b"\x80\x00"),  # EVEN-PORT too long
        (0x0019, b"\x11"),  # REQUESTED-TRANSPORT too short
        (0x001A, b"\x00\x00\x00\x00"),  # DONT-FRAGMENT with a value
        (0x0022, b"1234"),  # RESERVATION-TOKEN too short
        (0x0016, b"\x00\x01\x00"),  # XOR-RELAYED-ADDRESS truncated
    ],
)
def test_malformed_turn_attributes_are_decode_errors(code: int, value: bytes) -> None:
    body = struct.pack("!HH", code, len(value)) + value + b"\x00" * (-len(value) % 4)
    data = struct.pack("!HHI", 0x0003, len(body), 0x2112A442) + b"\x01" * 12 + body
    with pytest.raises(STUNDecodeError):
        decode(data, table=TURN_ATTRIBUTES)


@pytest.mark.parametrize(
    ("kind", "name"), [(DontFragment, "DONT-FRAGMENT"), (UseCandidate, "USE-CANDIDATE")]
)
def test_flag_attributes_refuse_a_value_by_name(kind: type[Attribute], name: str) -> None:
    """TURN's and ICE's flags share one decoder; its error names the attribute."""
    with pytest.raises(ValueError, match=f"^{name} carries no value$"):
        kind.decode_value(b"\x00", b"\x01" * 12)  # type: ignore[attr-defined]


# --- ChannelData ---------------------------------------------------------------------


def test_channel_data_over_udp_is_not_padded() -> None:
    assert encode_channel_data(0x4000, b"abcde") == bytes.fromhex("4000 0005") + b"abcde"
    assert encode_channel_data(0x4FFF, b"") == bytes.fromhex("4fff 0000")


def test_channel_data_over_a_stream_is_padded_to_four() -> None:
    framed = encode_channel_data(0x4001, b"abcde", pad=True)
    assert framed == bytes.fromhex("4001 0005") + b"abcde\x00\x00\x00"
    assert encode_channel_data(0x4001, b"abcd", pad=True) == bytes.fromhex("4001 0004") + b"abcd"
    assert pad_for_stream(encode_channel_data(0x4001, b"abcde")) == framed
    stun = encode(request())
    assert pad_for_stream(stun) == stun


def test_channel_data_decode_ignores_padding() -> None:
    assert decode_channel_data(bytes.fromhex("4002 0003") + b"xyz\x00") == ChannelData(
        0x4002, b"xyz"
    )
    assert decode_channel_data(bytes.fromhex("4002 0000")) == ChannelData(0x4002, b"")


@pytest.mark.parametrize(
    "data",
    [
        b"\x40\x00\x00",  # short header
        bytes.fromhex("4000 0005") + b"abcd",  # length overruns
        bytes.fromhex("5000 0000"),  # reserved channel number
        bytes.fromhex("3fff 0000"),  # not a channel at all
    ],
)
def test_bad_channel_data_is_refused(data: bytes) -> None:
    with pytest.raises(ChannelDataDecodeError):
        decode_channel_data(data)


def test_channel_data_encoding_refuses_what_cannot_be_framed() -> None:
    with pytest.raises(ValueError):
        encode_channel_data(0x3FFF, b"")
    with pytest.raises(ValueError):
        encode_channel_data(0x5000, b"")
    with pytest.raises(ValueError):
        encode_channel_data(0x4000, bytes(0x10000))
    assert (CHANNEL_NUMBERS.start, CHANNEL_NUMBERS.stop) == (0x4000, 0x5000)
    assert is_channel_data(b"\x40") and is_channel_data(b"\x4f")
    assert not is_channel_data(b"\x50") and not is_channel_data(b"")


def stream_sample() -> tuple[bytes, list[bytes]]:
    stun = encode(request(Method.ALLOCATE, [RequestedTransport()]))
    channel = encode_channel_data(0x4000, b"abcde")
    aligned = encode_channel_data(0x4001, b"wxyz")
    empty = encode_channel_data(0x4002, b"")
    stream = stun + pad_for_stream(channel) + aligned + empty + stun
    return stream, [stun, channel, aligned, empty, stun]


def test_stream_framer_cuts_at_every_boundary() -> None:
    """Whatever the chunks, the same messages come out, ChannelData without padding."""
    stream, expected = stream_sample()
    for cut in range(len(stream) + 1):
        framer = StreamFramer()
        frames = framer.feed(stream[:cut]) + framer.feed(stream[cut:])
        assert frames == expected, cut
        assert framer.buffered == 0


def test_stream_framer_byte_by_byte() -> None:
    stream, expected = stream_sample()
    framer = StreamFramer()
    frames: list[bytes] = []
    for byte in stream:
        frames += framer.feed(bytes([byte]))
    assert frames == expected


@pytest.mark.parametrize("garbage", [b"\x80\x00\x00\x00", b"\x00\x01\x00\x03" + bytes(20)])
def test_stream_framer_refuses_lost_framing(garbage: bytes) -> None:
    with pytest.raises(ChannelDataDecodeError):
        StreamFramer().feed(garbage)


# --- a fake TURN server ------------------------------------------------------------------


class FakeTURNServer:
    """
    Just enough of a TURN server: long-term credentials, nonces (stale on
    demand), quota, allocations, permissions, channels; silent on demand.
    """

    def __init__(self, clock: Clock, deliver: Callable[[bytes, tuple[str, int]], object]) -> None:
        self.clock = clock
        self.deliver = deliver
        self.users = {USER: PASSWORD}
        self.nonce = "nonce-1"
        self.nonces = 1
        self.stale = 0
        self.silent = False
        self.authenticate = True
        self.quota: int | None = None
        self.allocated = False
        self.granted_lifetime: int | None = None
        self.errors: dict[int, int] = {}
        self.algorithms: PasswordAlgorithms | None = None
        self.requests: list[Message] = []
        self.permissions: set[str] = set()
        self.channels: dict[int, tuple[str, int]] = {}
        self.indications: list[Message] = []
        self.channel_data: list[ChannelData] = []
        self.raw: list[bytes] = []

    def receive(self, packet: bytes, addr: tuple[str, int]) -> None:
        if self.silent or addr != SERVER:
            return
        self.raw.append(packet)
        if is_channel_data(packet):
            self.channel_data.append(decode_channel_data(packet))
            return
        message = decode(packet, table=TURN_ATTRIBUTES)
        if message.message_class == MessageClass.INDICATION:
            self.indications.append(message)
            return
        self.requests.append(message)
        answer = self.answer(message)
        self.clock.callLater(RTT, self.deliver, answer, SERVER)

    def challenge(self) -> list[Attribute]:
        extra: list[Attribute] = [Realm(REALM), Nonce(self.nonce)]
        if self.algorithms is not None:
            extra.append(self.algorithms)
        return extra

    def new_nonce(self) -> None:
        self.nonces += 1
        prefix = "obMatJos2AAAA" if self.algorithms is not None else ""
        self.nonce = f"{prefix}nonce-{self.nonces}"

    def answer(self, req: Message) -> bytes:
        if req.method in self.errors:
            return encode(error_response(req, self.errors[req.method]))
        if not self.authenticate:
            return encode(self.handle(req))
        if req.get(MessageIntegrity) is None and req.get(MessageIntegritySHA256) is None:
            return encode(error_response(req, 401, *self.challenge()))
        username = req.get(Username)
        password = self.users.get(username.value) if username else None
        algorithm = req.get(PasswordAlgorithm)
        number = algorithm.algorithm if algorithm is not None else PASSWORD_ALGORITHM_MD5
        key = long_term_key(username.value, REALM, password, number) if password else b""
        if password is None or not check_integrity(req, key):
            return encode(error_response(req, 401, *self.challenge()))
        if self.stale or req.get(Nonce) != Nonce(self.nonce):
            self.stale = max(0, self.stale - 1)
            self.new_nonce()
            return encode(error_response(req, 438, *self.challenge()))
        response = self.handle(req)
        if response.message_class == MessageClass.ERROR:
            return encode(response)
        return encode(with_integrity(response, sha256=algorithm is not None), key=key)

    def handle(self, req: Message) -> Message:
        lifetime = req.get(Lifetime)
        if req.method == Method.ALLOCATE:
            if self.quota is not None and self.quota <= 0:
                return error_response(req, 486)
            if self.allocated:
                return error_response(req, 437)
            self.allocated = True
            granted = self.granted_lifetime or (lifetime.seconds if lifetime else 600)
            return response_to(
                req, [XorRelayedAddress(*RELAYED), XorMappedAddress(*CLIENT), Lifetime(granted)]
            )
        if not self.allocated:
            return error_response(req, 437)
        if req.method == Method.REFRESH:
            if lifetime is not None and lifetime.seconds == 0:
                self.allocated = False
                return response_to(req, [Lifetime(0)])
            granted = self.granted_lifetime or (lifetime.seconds if lifetime else 600)
            return response_to(req, [Lifetime(granted)])
        if req.method == Method.CREATE_PERMISSION:
            for attribute in req.attributes:
                if isinstance(attribute, XorPeerAddress):
                    self.permissions.add(attribute.host)
            return response_to(req)
        if req.method == Method.CHANNEL_BIND:
            number, peer = req.get(ChannelNumber), req.get(XorPeerAddress)
            assert number is not None and peer is not None
            self.channels[number.number] = peer.address
            self.permissions.add(peer.host)
            return response_to(req)
        return error_response(req, 400)

    def of(self, method: int) -> list[Message]:
        return [m for m in self.requests if m.method == method]


class ServerTransport(RecordingUDPTransport):
    """The client's socket: what it writes reaches the fake server."""

    def __init__(self) -> None:
        super().__init__(*CLIENT)
        self.server: FakeTURNServer | None = None

    def write(self, packet: bytes, addr: tuple[str, int] | None = None) -> None:
        super().write(packet, addr)
        assert self.server is not None and addr is not None
        self.server.receive(packet, addr)


def make(**options: Any) -> tuple[TURNClient, FakeTURNServer, Clock, UDPMultiplexer]:
    clock = Clock()
    mux = UDPMultiplexer()
    transport = ServerTransport()
    mux.makeConnection(transport)
    server = FakeTURNServer(clock, mux.datagramReceived)
    transport.server = server
    schedule = options.pop("schedule", RetransmissionSchedule())
    stun = STUNClient(reactor=clock, schedule=schedule)
    client = TURNClient.on_multiplexer(mux, clock, stun, **options)
    return client, server, clock, mux


def settle(clock: Clock, rounds: int = 10) -> None:
    for _ in range(rounds):
        clock.advance(RTT)


def run_for(clock: Clock, seconds: float) -> None:
    """
    Advance in steps no longer than the next timer, as a reactor would:
    one long C{advance} would run a chain of timers late, each one timed
    from the end of the jump.
    """
    end = clock.seconds() + seconds
    while True:
        pending = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= end]
        if not pending:
            break
        clock.advance(max(min(pending) - clock.seconds(), 0))
    clock.advance(end - clock.seconds())


def allocated(**options: Any) -> tuple[Any, TURNClient, FakeTURNServer, Clock, UDPMultiplexer]:
    received: list[tuple[bytes, tuple[str, int]]] = []
    lifetime = options.pop("lifetime", None)
    client, server, clock, mux = make(**options)
    out = results(
        client.allocate(
            SERVER,
            USER,
            PASSWORD,
            lifetime=lifetime,
            receiver=lambda data, peer: received.append((data, peer)),
        )
    )
    settle(clock)
    (allocation,) = out
    assert not isinstance(allocation, Failure), allocation
    allocation.received = received
    return allocation, client, server, clock, mux


def lost_reason(allocation: Any) -> Any:
    """What C{allocation.lost} fired with (None if it has not), leaving its result in place."""
    out: list[Any] = []

    def keep(reason: Any) -> Any:
        out.append(reason)
        return reason

    allocation.lost.addCallback(keep)
    return out[0] if out else None


# --- allocation ----------------------------------------------------------------------


def test_long_term_credential_dance():
    """
    Unauthenticated Allocate, 401 with REALM and NONCE, then the same request
    with USERNAME, REALM, NONCE and MESSAGE-INTEGRITY under MD5(user:realm:password).
    """
    allocation, client, server, clock, mux = allocated(lifetime=1200)
    first, second = server.of(Method.ALLOCATE)
    assert first.get(RequestedTransport) == RequestedTransport(17)
    assert first.get(Lifetime) == Lifetime(1200)
    assert first.get(MessageIntegrity) is None and first.get(Username) is None
    assert second.get(Username) == Username(USER)
    assert second.get(Realm) == Realm(REALM)
    assert second.get(Nonce) == Nonce("nonce-1")
    assert second.get(RequestedTransport) == RequestedTransport(17)
    assert check_integrity(second, long_term_key(USER, REALM, PASSWORD))
    assert allocation.relayed_address == RELAYED
    assert allocation.mapped_address == CLIENT
    assert allocation.lifetime == 1200
    assert allocation.expires_at == pytest.approx(clock.seconds() - 8 * RTT + 1200)
    assert allocation.server == SERVER
    assert allocation.active
    assert client.allocations == {SERVER: allocation}
    assert client.stats.allocations == 1


def test_password_algorithms_of_an_rfc_8489_server():
    """Offered PASSWORD-ALGORITHMS: echoed, SHA-256 chosen, and MI-SHA256 added."""
    client, server, clock, mux = make()
    server.algorithms = PasswordAlgorithms(
        ((PASSWORD_ALGORITHM_SHA256, b""), (PASSWORD_ALGORITHM_MD5, b""))
    )
    server.nonce = "obMatJos2AAAAnonce-1"
    out = results(client.allocate(SERVER, USER, PASSWORD))
    settle(clock)
    assert not isinstance(out[0], Failure), out
    signed = server.of(Method.ALLOCATE)[1]
    assert signed.get(PasswordAlgorithms) == server.algorithms
    assert signed.get(PasswordAlgorithm) == PasswordAlgorithm(PASSWORD_ALGORITHM_SHA256)
    assert signed.get(MessageIntegrity) is not None
    assert signed.get(MessageIntegritySHA256) is not None
    sha256_key = long_term_key(USER, REALM, PASSWORD, PASSWORD_ALGORITHM_SHA256)
    assert check_integrity(signed, sha256_key)


def test_server_without_authentication():
    client, server, clock, mux = make()
    server.authenticate = False
    out = results(client.allocate(SERVER, USER, PASSWORD))
    settle(clock)
    assert out[0].relayed_address == RELAYED
    assert len(server.of(Method.ALLOCATE)) == 1


def test_wrong_password_is_an_authentication_error():
    client, server, clock, mux = make()
    out = results(client.allocate(SERVER, USER, "wrong"))
    settle(clock)
    assert out[0].check(TURNAuthenticationError)
    assert out[0].value.code == 401
    assert out[0].value.server == SERVER
    assert len(server.of(Method.ALLOCATE)) == 2, "no third attempt with the same password"
    assert client.allocations == {}


def test_quota_reached():
    client, server, clock, mux = make()
    server.quota = 0
    out = results(client.allocate(SERVER, USER, PASSWORD))
    settle(clock)
    assert out[0].check(TURNQuotaError)
    assert out[0].value.code == 486
    assert "486" in str(out[0].value)


@pytest.mark.parametrize("code", [403, 440, 442, 508])
def test_other_error_codes_are_turn_errors(code):
    client, server, clock, mux = make()
    server.errors[Method.ALLOCATE] = code
    out = results(client.allocate(SERVER, USER, PASSWORD))
    settle(clock)
    error = out[0].value
    assert type(error) is TURNError
    assert error.code == code
    assert error.reason
    assert isinstance(error.response, Message)


def test_stale_nonce_on_allocate_is_retried_once():
    client, server, clock, mux = make()
    server.stale = 1
    out = results(client.allocate(SERVER, USER, PASSWORD))
    settle(clock)
    assert out[0].relayed_address == RELAYED
    nonces = [m.get(Nonce) for m in server.of(Method.ALLOCATE)]
    assert nonces == [None, Nonce("nonce-1"), Nonce("nonce-2")]
    assert client.stats.stale_nonces == 1


def test_stale_nonce_twice_is_an_error():
    client, server, clock, mux = make()
    server.stale = 2
    out = results(client.allocate(SERVER, USER, PASSWORD))
    settle(clock)
    assert out[0].check(TURNError)
    assert out[0].value.code == 438
    assert len(server.of(Method.ALLOCATE)) == 3


def test_unreachable_server_is_unavailable_after_the_stun_timeout():
    schedule = RetransmissionSchedule(rto=0.1, rc=3, rm=4)
    client, server, clock, mux = make(schedule=schedule)
    server.silent = True
    out = results(client.allocate(SERVER, USER, PASSWORD))
    run_for(clock, schedule.total - 0.01)
    assert out == []
    run_for(clock, 0.02)
    assert out[0].check(TURNUnavailable)
    assert isinstance(out[0].value.__cause__, STUNTimeout)
    assert out[0].value.code is None
    assert clock.getDelayedCalls() == []


def test_one_allocation_per_server():
    allocation, client, server, clock, mux = allocated()
    out = results(client.allocate(SERVER, USER, PASSWORD))
    assert out[0].check(TURNError)


def test_cancelled_allocate_leaves_nothing_behind():
    client, server, clock, mux = make()
    server.silent = True
    d = client.allocate(SERVER, USER, PASSWORD)
    out = results(d)
    d.cancel()
    assert out[0].check(CancelledError)
    assert client.stun.pending() == 0
    assert clock.getDelayedCalls() == []
    server.silent = False
    again = results(client.allocate(SERVER, USER, PASSWORD))
    settle(clock)
    assert again[0].relayed_address == RELAYED


def test_turn_error_mapping():
    assert isinstance(turn_error(ValueError("x"), SERVER), ValueError)
    assert "no answer" in str(TURNUnavailable("no answer", SERVER))
    assert str(TURNAllocationClosed(server=SERVER)).endswith("(TURN server 192.0.2.1:3478)")


# --- refreshing ----------------------------------------------------------------------


def test_allocation_refreshed_at_80_percent_of_its_lifetime():
    allocation, client, server, clock, mux = allocated(lifetime=1000)
    start = clock.seconds() - 8 * RTT  # when the lifetime was granted
    run_for(clock, start + 799 - clock.seconds())
    assert server.of(Method.REFRESH) == []
    run_for(clock, 1.5)
    (refresh,) = server.of(Method.REFRESH)
    assert refresh.get(Lifetime) == Lifetime(1000)
    assert refresh.get(Username) == Username(USER)
    settle(clock, 2)
    assert client.stats.refreshes == 1
    assert allocation.expires_at == pytest.approx(start + 800 + RTT + 1000, abs=0.1)
    run_for(clock, 799)
    assert len(server.of(Method.REFRESH)) == 1
    run_for(clock, 2)
    assert len(server.of(Method.REFRESH)) == 2


def test_refresh_follows_the_granted_lifetime():
    """The server may grant less than asked: the next refresh follows what it granted."""
    client, server, clock, mux = make(refresh_fraction=0.5)
    server.granted_lifetime = 100
    results(client.allocate(SERVER, USER, PASSWORD, lifetime=3600))
    settle(clock)
    run_for(clock, 49)
    assert server.of(Method.REFRESH) == []
    run_for(clock, 2)
    assert len(server.of(Method.REFRESH)) == 1


def test_stale_nonce_on_refresh_is_retried():
    allocation, client, server, clock, mux = allocated()
    server.stale = 1
    out = results(allocation.refresh())
    settle(clock)
    assert out == [600]
    refreshes = server.of(Method.REFRESH)
    assert [m.get(Nonce) for m in refreshes] == [Nonce("nonce-1"), Nonce("nonce-2")]
    assert allocation.active
    # the fresh nonce is kept for later requests
    results(allocation.create_permission(PEER[0]))
    settle(clock)
    assert server.of(Method.CREATE_PERMISSION)[0].get(Nonce) == Nonce("nonce-2")


def test_server_gone_refresh_fails_and_the_allocation_is_lost():
    schedule = RetransmissionSchedule(rto=0.5, rc=3, rm=4)
    allocation, client, server, clock, mux = allocated(schedule=schedule)
    results(allocation.create_permission(PEER[0]))
    results(allocation.bind_channel(OTHER_PEER))
    settle(clock)
    server.silent = True
    run_for(clock, 480 + schedule.total + 1)
    reason = lost_reason(allocation)
    assert isinstance(reason, TURNUnavailable)
    assert isinstance(reason.__cause__, STUNTimeout)
    assert not allocation.active
    assert client.allocations == {}
    assert clock.getDelayedCalls() == [], "every timer cancelled"
    with pytest.raises(TURNAllocationClosed):
        allocation.send(b"x", PEER)


def test_allocation_mismatch_on_refresh_loses_the_allocation():
    allocation, client, server, clock, mux = allocated()
    server.allocated = False  # the server forgot it
    out = results(allocation.refresh())
    settle(clock)
    assert out[0].check(TURNError)
    reason = lost_reason(allocation)
    assert reason.code == 437
    assert clock.getDelayedCalls() == []


# --- permissions and channels -----------------------------------------------------------------


def test_permission_created_and_refreshed_every_four_minutes():
    allocation, client, server, clock, mux = allocated()
    out = results(allocation.create_permission(PEER[0], OTHER_PEER[0]))
    settle(clock)
    assert out == [None]
    (created,) = server.of(Method.CREATE_PERMISSION)
    peers = [a for a in created.attributes if isinstance(a, XorPeerAddress)]
    assert [p.host for p in peers] == [PEER[0], OTHER_PEER[0]]
    assert allocation.permissions == {PEER[0], OTHER_PEER[0]}
    run_for(clock, PERMISSION_REFRESH - 1)
    assert len(server.of(Method.CREATE_PERMISSION)) == 1
    run_for(clock, 1.5)
    assert len(server.of(Method.CREATE_PERMISSION)) == 3  # one per host
    settle(clock)
    assert allocation.permissions == {PEER[0], OTHER_PEER[0]}


def test_permission_needs_an_ip_address():
    allocation, client, server, clock, mux = allocated()
    out = results(allocation.create_permission("peer.example.com"))
    assert out[0].check(ConfigurationError)
    out = results(allocation.create_permission())
    assert out[0].check(ValueError)


def test_forbidden_permission_refresh_drops_only_that_permission():
    allocation, client, server, clock, mux = allocated()
    results(allocation.create_permission(PEER[0]))
    settle(clock)
    server.errors[Method.CREATE_PERMISSION] = 403
    run_for(clock, PERMISSION_REFRESH + 1)
    assert allocation.permissions == frozenset()
    assert allocation.active
    with pytest.raises(TURNNoPermission):
        allocation.send(b"x", PEER)


def test_channel_bound_numbered_and_refreshed():
    allocation, client, server, clock, mux = allocated()
    first = results(allocation.bind_channel(PEER))
    again = results(allocation.bind_channel(PEER))  # while the first is in flight
    second = results(allocation.bind_channel(OTHER_PEER))
    settle(clock)
    assert first == again == [0x4000]
    assert second == [0x4001]
    assert len(server.of(Method.CHANNEL_BIND)) == 2
    assert server.channels == {0x4000: PEER, 0x4001: OTHER_PEER}
    assert allocation.channels == {PEER: 0x4000, OTHER_PEER: 0x4001}
    assert results(allocation.bind_channel(PEER)) == [0x4000]
    assert len(server.of(Method.CHANNEL_BIND)) == 2
    assert allocation.permissions == {PEER[0], OTHER_PEER[0]}, "a channel implies a permission"
    # the permissions (5 min) are kept up by CreatePermission, the channels (10 min) by rebinding
    run_for(clock, PERMISSION_REFRESH + 1)
    assert len(server.of(Method.CREATE_PERMISSION)) == 2
    run_for(clock, CHANNEL_REFRESH - PERMISSION_REFRESH)
    rebinds = server.of(Method.CHANNEL_BIND)[2:]
    assert sorted(m.get(ChannelNumber).number for m in rebinds) == [0x4000, 0x4001]
    settle(clock)
    assert allocation.channels == {PEER: 0x4000, OTHER_PEER: 0x4001}


def test_sending_goes_on_while_a_permission_refresh_is_in_flight():
    allocation, client, server, clock, mux = allocated()
    results(allocation.create_permission(PEER[0]))
    settle(clock)
    run_for(clock, PERMISSION_REFRESH + RTT / 2)  # the refresh is sent, not yet answered
    assert len(server.of(Method.CREATE_PERMISSION)) == 2
    allocation.send(b"meanwhile", PEER)
    assert server.indications[-1].get(Data) == Data(b"meanwhile")


def test_failed_channel_bind_reaches_every_waiter_and_can_be_retried():
    allocation, client, server, clock, mux = allocated()
    server.errors[Method.CHANNEL_BIND] = 400
    first, second = results(allocation.bind_channel(PEER)), results(allocation.bind_channel(PEER))
    cancelled = allocation.bind_channel(PEER)
    cancelled.addErrback(lambda failure: failure.trap(CancelledError))
    cancelled.cancel()
    settle(clock)
    assert first[0].value.code == 400 and second[0].value.code == 400
    assert len(server.of(Method.CHANNEL_BIND)) == 1
    assert allocation.channels == {}
    del server.errors[Method.CHANNEL_BIND]
    again = results(allocation.bind_channel(PEER))
    settle(clock)
    assert again == [0x4000]


def test_refused_channel_refresh_drops_the_channel_and_retires_its_number():
    allocation, client, server, clock, mux = allocated()
    results(allocation.bind_channel(PEER))
    settle(clock)
    server.errors[Method.CHANNEL_BIND] = 403
    run_for(clock, CHANNEL_REFRESH + 1)
    assert allocation.channels == {}
    assert allocation.active
    del server.errors[Method.CHANNEL_BIND]
    rebound = results(allocation.bind_channel(OTHER_PEER))
    settle(clock)
    assert rebound == [0x4001], "0x4000 is not given to another peer"


def test_stale_nonce_on_channel_bind_and_permission_is_retried():
    allocation, client, server, clock, mux = allocated()
    server.stale = 1
    bound = results(allocation.bind_channel(PEER))
    settle(clock)
    server.stale = 1
    permitted = results(allocation.create_permission(OTHER_PEER[0]))
    settle(clock)
    assert bound == [0x4000] and permitted == [None]
    assert client.stats.stale_nonces == 2


# --- data ----------------------------------------------------------------------------


def test_send_needs_a_permission():
    allocation, client, server, clock, mux = allocated()
    with pytest.raises(TURNNoPermission) as caught:
        allocation.send(b"hello", PEER)
    assert caught.value.peer == PEER
    assert server.indications == []


def test_send_indication_after_permission_then_channel_data_after_binding():
    allocation, client, server, clock, mux = allocated()
    results(allocation.create_permission(PEER[0]))
    settle(clock)
    allocation.send(b"hello", PEER)
    allocation.send(b"again", PEER, dont_fragment=True)
    first, second = server.indications
    assert (first.method, first.message_class) == (Method.SEND, MessageClass.INDICATION)
    assert first.get(XorPeerAddress).address == PEER
    assert first.get(Data) == Data(b"hello")
    assert first.get(MessageIntegrity) is None, "indications cannot be authenticated"
    assert first.get(DontFragment) is None and second.get(DontFragment) == DontFragment()
    results(allocation.bind_channel(PEER))
    settle(clock)
    allocation.send(b"abcde", PEER)
    assert server.channel_data == [ChannelData(0x4000, b"abcde")]
    assert server.raw[-1] == bytes.fromhex("4000 0005") + b"abcde", "no padding over UDP"
    assert client.stats.sent_indications == 2 and client.stats.sent_channel_data == 1


def data_indication(peer, data: bytes) -> bytes:
    return encode(
        Message(
            Method.DATA,
            MessageClass.INDICATION,
            b"\x02" * 12,
            (XorPeerAddress(*peer), Data(data)),
        )
    )


def test_data_indications_and_channel_data_reach_the_receiver():
    allocation, client, server, clock, mux = allocated()
    results(allocation.bind_channel(PEER))
    settle(clock)
    mux.datagramReceived(data_indication(OTHER_PEER, b"via indication"), SERVER)
    mux.datagramReceived(encode_channel_data(0x4000, b"via channel") + b"\x00", SERVER)
    assert allocation.received == [(b"via indication", OTHER_PEER), (b"via channel", PEER)]
    assert client.stats.received_indications == 1
    assert client.stats.received_channel_data == 1


def test_what_cannot_be_delivered_is_dropped_and_counted():
    allocation, client, server, clock, mux = allocated()
    mux.datagramReceived(encode_channel_data(0x4123, b"unbound"), SERVER)
    mux.datagramReceived(data_indication(PEER, b"elsewhere"), ("192.0.2.99", 3478))
    mux.datagramReceived(b"\x40\x00\x00\x09short", SERVER)
    no_data = Message(Method.DATA, MessageClass.INDICATION, b"\x02" * 12, (XorPeerAddress(*PEER),))
    mux.datagramReceived(encode(no_data), SERVER)
    assert allocation.received == []
    assert client.stats.dropped_unknown_channel == 1
    assert client.stats.dropped_unknown_server == 1
    assert client.stats.dropped_malformed == 2


def test_a_failing_receiver_does_not_break_the_socket():
    allocation, client, server, clock, mux = allocated()

    def explode(data, peer):
        raise RuntimeError("application bug")

    allocation.receiver = explode
    mux.datagramReceived(data_indication(PEER, b"x"), SERVER)
    allocation.receiver = lambda data, peer: allocation.received.append((data, peer))
    mux.datagramReceived(data_indication(PEER, b"y"), SERVER)
    assert allocation.received == [(b"y", PEER)]


def test_attached_protocol_uses_the_relay_as_its_socket():
    allocation, client, server, clock, mux = allocated()
    results(allocation.create_permission(PEER[0]))
    settle(clock)

    class Echo(DatagramProtocol):
        def datagramReceived(self, data, addr):
            self.transport.write(b"echo:" + data, addr)

    echo = Echo()
    transport = allocation.attach(echo)
    assert echo.transport is transport
    assert transport.getHost() == IPv4Address("UDP", *RELAYED)
    mux.datagramReceived(data_indication(PEER, b"ping"), SERVER)
    assert server.indications[-1].get(Data) == Data(b"echo:ping")
    with pytest.raises(ValueError):
        transport.write(b"no address", None)
    out = results(transport.stopListening())
    twice = results(transport.stopListening())
    settle(clock)
    assert out == twice == [None]
    assert isinstance(lost_reason(allocation), TURNAllocationClosed)


# --- the end ---------------------------------------------------------------------------


def test_close_deallocates_and_cancels_every_timer():
    allocation, client, server, clock, mux = allocated()
    results(allocation.create_permission(PEER[0]))
    results(allocation.bind_channel(OTHER_PEER))
    settle(clock)
    out = results(allocation.close())
    assert clock.getDelayedCalls() != []  # the Refresh's retransmission, nothing else
    settle(clock)
    assert out == [None]
    last = server.of(Method.REFRESH)[-1]
    assert last.get(Lifetime) == Lifetime(0)
    assert check_integrity(last, long_term_key(USER, REALM, PASSWORD))
    assert not server.allocated
    assert isinstance(lost_reason(allocation), TURNAllocationClosed)
    assert client.allocations == {}
    assert clock.getDelayedCalls() == []
    with pytest.raises(TURNAllocationClosed):
        allocation.send(b"x", PEER)
    assert results(allocation.refresh())[0].check(TURNAllocationClosed)
    assert results(allocation.close()) == [None]
    again = results(client.allocate(SERVER, USER, PASSWORD))
    settle(clock)
    assert again[0].relayed_address == RELAYED


def test_an_allocation_is_active_then_closing_then_ended():
    allocation, client, server, clock, mux = allocated()
    states = [allocation.state]
    out = results(allocation.close())
    states.append(allocation.state)
    assert out == [] and not allocation.active
    settle(clock)
    states.append(allocation.state)
    assert out == [None]
    assert states == [AllocationState.ACTIVE, AllocationState.CLOSING, AllocationState.ENDED]


def test_a_lost_allocation_ends_at_once():
    allocation, client, server, clock, mux = allocated()
    client.lose_all(TURNUnavailable("gone", SERVER))
    assert allocation.state is AllocationState.ENDED
    assert lost_reason(allocation).reason == "gone"


def test_close_of_an_unreachable_server_still_closes():
    schedule = RetransmissionSchedule(rto=0.1, rc=2, rm=2)
    allocation, client, server, clock, mux = allocated(schedule=schedule)
    server.silent = True
    out = results(client.close())
    run_for(clock, schedule.total + 0.1)
    assert out == [None]
    assert isinstance(lost_reason(allocation), TURNAllocationClosed)
    assert clock.getDelayedCalls() == []


def test_stopping_the_socket_loses_the_allocations():
    allocation, client, server, clock, mux = allocated()
    mux.doStop()
    assert isinstance(lost_reason(allocation), TURNUnavailable)
    assert clock.getDelayedCalls() == []


def test_refresh_fraction_is_checked():
    with pytest.raises(ConfigurationError):
        TURNClient(STUNClient(reactor=Clock()), Clock(), refresh_fraction=1.0)


def test_udp_client_needs_a_server_address():
    client, server, clock, mux = make()
    assert results(client.allocate(None, USER, PASSWORD))[0].check(ConfigurationError)


# --- streams ---------------------------------------------------------------------------


class StreamServer:
    """The fake server behind a StringTransport: it reads what the client wrote."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.transport = StringTransport(
            hostAddress=IPv4Address("TCP", *CLIENT), peerAddress=IPv4Address("TCP", *SERVER)
        )
        self.protocol = TURNStreamProtocol(clock, refresh_fraction=0.8)
        self.protocol.makeConnection(self.transport)
        self.answers: list[bytes] = []
        self.fake = FakeTURNServer(clock, lambda data, addr: self.answers.append(data))
        self.framer = StreamFramer()
        self.written: list[bytes] = []

    def pump(self, chunk: int = 7) -> None:
        """Hand the client's bytes to the fake, and its answers back in small chunks."""
        for _ in range(20):
            data = self.transport.value()
            self.transport.clear()
            self.written.append(data)
            for frame in self.framer.feed(data):
                self.fake.receive(frame, SERVER)
            self.clock.advance(RTT)
            stream = b"".join(pad_for_stream(a) for a in self.answers)
            self.answers.clear()
            for i in range(0, len(stream), chunk):
                self.protocol.dataReceived(stream[i : i + chunk])


def test_over_a_stream_same_api_no_retransmissions_padded_channel_data():
    clock = Clock()
    stream = StreamServer(clock)
    client = stream.protocol.client
    assert client is not None and client.server == SERVER
    received: list[Any] = []
    out = results(client.allocate(None, USER, PASSWORD, receiver=lambda d, p: received.append(p)))
    stream.pump()
    allocation = out[0]
    assert allocation.relayed_address == RELAYED
    results(allocation.create_permission(PEER[0]))
    results(allocation.bind_channel(OTHER_PEER))
    stream.pump()
    allocation.send(b"abcde", OTHER_PEER)
    assert stream.transport.value() == bytes.fromhex("4000 0005") + b"abcde\x00\x00\x00"
    stream.pump()
    assert stream.fake.channel_data == [ChannelData(0x4000, b"abcde")]
    allocation.send(b"ind", PEER)
    stream.pump()
    assert stream.fake.indications[-1].get(Data) == Data(b"ind")
    padded = encode_channel_data(allocation.channels[OTHER_PEER], b"xyz", pad=True)
    stream.protocol.dataReceived(data_indication(PEER, b"a") + padded)
    assert received == [PEER, OTHER_PEER]
    # a request is sent once: no retransmission timers on a reliable stream
    results(allocation.refresh())
    sent = stream.transport.value()
    run_for(clock, 30)
    assert stream.transport.value() == sent
    stream.pump()


def test_stream_client_allocates_on_its_own_server_only():
    clock = Clock()
    stream = StreamServer(clock)
    client = stream.protocol.client
    out = results(client.allocate(("192.0.2.200", 3478), USER, PASSWORD))
    assert out[0].check(ConfigurationError)
    out = results(client.allocate(SERVER, USER, PASSWORD))
    stream.pump()
    assert out[0].relayed_address == RELAYED


def test_lost_stream_loses_the_allocations_and_fails_requests():
    clock = Clock()
    stream = StreamServer(clock)
    client = stream.protocol.client
    out = results(client.allocate(None, USER, PASSWORD))
    stream.pump()
    allocation = out[0]
    pending = results(allocation.create_permission(PEER[0]))
    stream.protocol.connectionLost(Failure(ConnectionError("reset")))
    assert isinstance(lost_reason(allocation), TURNUnavailable)
    assert "stream was closed" in str(lost_reason(allocation))
    assert pending[0].check(TURNUnavailable)
    assert clock.getDelayedCalls() == []


def test_garbage_on_the_stream_drops_the_connection():
    clock = Clock()
    stream = StreamServer(clock)
    stream.protocol.dataReceived(b"\x80garbage")
    assert stream.transport.disconnecting


def test_closing_a_stream_client_deallocates_then_disconnects():
    clock = Clock()
    stream = StreamServer(clock)
    client = stream.protocol.client
    out = results(client.allocate(None, USER, PASSWORD))
    stream.pump()
    closed = results(client.close())
    assert not stream.transport.disconnecting
    stream.pump()
    assert closed == [None]
    assert stream.fake.of(Method.REFRESH)[-1].get(Lifetime) == Lifetime(0)
    assert stream.transport.disconnecting
    assert isinstance(lost_reason(out[0]), TURNAllocationClosed)
