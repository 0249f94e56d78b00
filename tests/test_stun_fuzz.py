"""
Property tests of the STUN codec.

The decoder faces whatever arrives on a UDP port, so its one promise is
that any input gives a L{Message} or a L{STUNDecodeError}, nothing else.
Random bytes alone rarely get past the header check, so the inputs here are
also valid messages damaged in the ways datagrams get damaged, and
messages whose header is right but whose attributes are random.  For
well-formed messages, encoding and decoding must be inverses.
"""

from __future__ import annotations

import hmac
import socket
import struct
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted_nat.errors import STUNDecodeError
from twisted_nat.stun.attributes import (
    MAGIC_COOKIE_BYTES,
    STUN_ATTRIBUTES,
    AlternateDomain,
    AlternateServer,
    Attribute,
    ChangedAddress,
    ChangeRequest,
    ErrorCode,
    Fingerprint,
    IceControlled,
    IceControlling,
    MappedAddress,
    MessageIntegrity,
    MessageIntegritySHA256,
    Nonce,
    OtherAddress,
    Padding,
    PasswordAlgorithm,
    PasswordAlgorithms,
    Priority,
    Realm,
    ResponseOrigin,
    ResponsePort,
    Software,
    SourceAddress,
    UnknownAttribute,
    UnknownAttributes,
    UseCandidate,
    UserHash,
    Username,
    XorMappedAddress,
)
from twisted_nat.stun.message import (
    Message,
    MessageClass,
    Method,
    check_integrity,
    decode,
    encode,
    error_response,
    request,
)
from twisted_nat.stun.message.integrity import SHA1, SHA256, keyed_hmac

KEY = b"fuzzing key"
TID = bytes(range(12))

fast = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def decode_or_refuse(data: bytes, allow_rfc3489: bool = False) -> Message | None:
    """
    Decode C{data}; a L{STUNDecodeError} is an answer, any other exception
    fails the test.  What does decode must also survive the integrity check
    and encode again.
    """
    try:
        message = decode(data, allow_rfc3489=allow_rfc3489)
    except STUNDecodeError:
        return None
    assert isinstance(message, Message)
    assert isinstance(check_integrity(message, KEY), bool)
    assert_canonical(message)
    return message


def without_fingerprint_values(message: Message) -> tuple[Attribute, ...]:
    return tuple(Fingerprint() if type(a) is Fingerprint else a for a in message.attributes)


def assert_canonical(message: Message) -> None:
    """
    Whatever decodes encodes again, and decoding that gives the same values:
    the codec's normal form is one round trip away.  (FINGERPRINT values
    may differ: the first encoding can change padding bytes it covers.)
    """
    data = encode(message)
    again = decode(data, allow_rfc3489=True)
    assert without_fingerprint_values(again) == without_fingerprint_values(message)
    assert (again.method, again.message_class) == (message.method, message.message_class)
    assert (again.transaction_id, again.cookie) == (message.transaction_id, message.cookie)
    assert encode(again) == data


# --- (a) arbitrary bytes ---------------------------------------------------------


@fast
@given(st.binary(max_size=600), st.booleans())
def test_arbitrary_bytes(data: bytes, allow_rfc3489: bool) -> None:
    decode_or_refuse(data, allow_rfc3489)


@fast
@given(st.binary(min_size=0, max_size=580))
def test_arbitrary_bytes_behind_a_valid_header(body: bytes) -> None:
    """Random attribute regions behind a header with the right length and cookie."""
    body = body[: len(body) - len(body) % 4]
    header = struct.pack("!HH4s12s", 0x0101, len(body), MAGIC_COOKIE_BYTES, TID)
    decode_or_refuse(header + body)


# --- (b) damaged valid messages ------------------------------------------------------


def seed_messages() -> list[bytes]:
    """Valid messages of several shapes, to be damaged."""
    binding = request(
        attributes=[
            Username("evtj:h6vY"),
            Priority(0x6E0001FF),
            IceControlling(0x932FF9B151263B36),
            UseCandidate(),
            MessageIntegrity(),
            Fingerprint(),
        ],
        transaction_id=TID,
    )
    ipv6 = Message(
        Method.BINDING,
        MessageClass.SUCCESS,
        TID,
        (
            XorMappedAddress("2001:db8:1234:5678:11:2233:4455:6677", 32853),
            MappedAddress("2001:db8::1", 3478),
            ResponseOrigin("2001:db8::2", 3478),
            OtherAddress("2001:db8::3", 3479),
            Software("test vector"),
            Fingerprint(),
        ),
    )
    error = error_response(
        binding,
        420,
        UnknownAttributes((0x0002, 0x7FFF)),
        Realm("example.org"),
        Nonce("f//499k954d6OL34oL9FSTvy64sA"),
        PasswordAlgorithms(((1, b""), (2, b"abc"))),
        MessageIntegritySHA256(length=16),
        Fingerprint(),
    )
    long_term = Message(
        Method.ALLOCATE,
        MessageClass.REQUEST,
        TID,
        (
            Username("\u30de\u30c8\u30ea\u30c3\u30af\u30b9"),
            UserHash(bytes(32)),
            PasswordAlgorithm(2),
            UnknownAttribute(0x0019, b"\x11\x00\x00\x00"),
            ChangeRequest(True, True),
            ResponsePort(4000),
            Padding(b"xyz"),
            MessageIntegrity(),
            MessageIntegritySHA256(),
            Fingerprint(),
        ),
    )
    legacy = Message(
        Method.BINDING,
        MessageClass.SUCCESS,
        TID,
        (MappedAddress("192.0.2.1", 1), SourceAddress("192.0.2.2", 2), ChangedAddress("::1", 3)),
        cookie=b"\x01\x02\x03\x04",
    )
    return [encode(m, key=KEY) for m in (binding, ipv6, error, long_term, legacy)]


SEEDS = seed_messages()


def test_seeds_are_valid() -> None:
    for data in SEEDS:
        message = decode(data, allow_rfc3489=True)
        assert encode(message, key=KEY) == data


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A seed message with a few random flips, cuts, insertions or new lengths."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "length", "attr"]))
        if kind == "flip" and data:
            index = draw(st.integers(0, len(data) - 1))
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            # Mostly keep the header: cutting into it is covered by (a).
            del data[draw(st.integers(min(20, len(data)), len(data)) | st.integers(0, 20)) :]
        elif kind == "insert":
            index = draw(st.integers(0, len(data)))
            data[index:index] = draw(st.binary(min_size=1, max_size=12))
        elif kind == "delete" and data:
            index = draw(st.integers(0, len(data) - 1))
            del data[index : index + draw(st.integers(1, 8))]
        elif kind == "length" and len(data) >= 4:
            length = draw(st.one_of(st.integers(0, 0xFFFF), st.just(max(len(data) - 20, 0))))
            struct.pack_into("!H", data, 2, length)
        elif kind == "attr" and len(data) >= 24:
            # Rewrite one attribute header somewhere in the body.
            index = 20 + 4 * draw(st.integers(0, (len(data) - 24) // 4))
            struct.pack_into(
                "!HH", data, index, draw(attribute_types), draw(st.integers(0, 0xFFFF))
            )
    if draw(st.booleans()) and len(data) >= 20:
        # Make the header agree with the damage, so that attribute parsing
        # runs: right length (rounded to the damaged size) and magic cookie.
        del data[len(data) - (len(data) - 20) % 4 :]
        struct.pack_into("!H4s", data, 2, len(data) - 20, MAGIC_COOKIE_BYTES)
        data[0] &= 0x3F
    return bytes(data)


attribute_types = st.one_of(
    st.sampled_from(
        [
            *(0x0001, 0x0003, 0x0006, 0x0008, 0x0009, 0x000A, 0x001C, 0x001D, 0x001E, 0x0020),
            *(0x0024, 0x0025, 0x0026, 0x0027, 0x8002, 0x8022, 0x8028, 0x8029, 0x802A, 0x802C),
        ]
    ),
    st.integers(0, 0xFFFF),
)


@fast
@given(damaged(), st.booleans())
def test_damaged_messages(data: bytes, allow_rfc3489: bool) -> None:
    decode_or_refuse(data, allow_rfc3489)


@st.composite
def random_tlvs(draw: st.DrawFn) -> bytes:
    """
    A header with the right length and cookie over random attributes of
    known and unknown types, lengths that fit or not, and sometimes a
    correct FINGERPRINT, so that the value decoders see garbage.
    """
    body = bytearray()
    for _ in range(draw(st.integers(0, 8))):
        value = draw(st.binary(max_size=40))
        declared = draw(st.one_of(st.just(len(value)), st.integers(0, 48)))
        body += struct.pack("!HH", draw(attribute_types), declared) + value
        body += bytes(-len(body) % 4)
    mtype = draw(st.integers(0, 0x3FFF))
    header = struct.pack("!HH4s12s", mtype, len(body), MAGIC_COOKIE_BYTES, TID)
    data = header + body
    if draw(st.booleans()):
        with_fp = struct.pack("!HH4s12s", mtype, len(body) + 8, MAGIC_COOKIE_BYTES, TID) + body
        crc = zlib.crc32(with_fp) ^ 0x5354554E
        data = with_fp + struct.pack("!HHI", 0x8028, 4, crc)
    return data


@fast
@given(random_tlvs())
def test_random_attributes_behind_a_valid_header(data: bytes) -> None:
    decode_or_refuse(data)


# --- (c) well-formed messages ----------------------------------------------------------


def host(family: int, size: int) -> st.SearchStrategy[str]:
    return st.binary(min_size=size, max_size=size).map(lambda raw: socket.inet_ntop(family, raw))


hosts = st.one_of(host(socket.AF_INET, 4), host(socket.AF_INET6, 16))
ports = st.integers(0, 0xFFFF)
texts = st.text(st.characters(codec="utf-8"), max_size=40)
address_kinds = st.sampled_from(
    [
        *(MappedAddress, XorMappedAddress, SourceAddress, ChangedAddress),
        *(AlternateServer, ResponseOrigin, OtherAddress),
    ]
)
text_kinds = st.sampled_from([Username, Realm, Nonce, Software, AlternateDomain])
parameters = st.binary(max_size=12)
u16 = st.integers(0, 0xFFFF)

known_attributes: st.SearchStrategy[Attribute] = st.one_of(
    st.builds(lambda kind, h, p: kind(h, p), address_kinds, hosts, ports),
    st.builds(lambda kind, t: kind(t), text_kinds, texts),
    st.builds(ErrorCode, st.integers(300, 699), texts),
    st.builds(UnknownAttributes, st.lists(u16, max_size=6).map(tuple)),
    st.builds(PasswordAlgorithm, u16, parameters),
    st.builds(PasswordAlgorithms, st.lists(st.tuples(u16, parameters), max_size=3).map(tuple)),
    st.builds(ChangeRequest, st.booleans(), st.booleans()),
    st.builds(ResponsePort, ports),
    st.builds(Priority, st.integers(0, 2**32 - 1)),
    st.just(UseCandidate()),
    st.builds(IceControlled, st.integers(0, 2**64 - 1)),
    st.builds(IceControlling, st.integers(0, 2**64 - 1)),
    st.builds(UserHash, st.binary(min_size=32, max_size=32)),
    st.builds(Padding, st.binary(max_size=64)),
)

# Types the STUN table lacks (kept clear of TURN's 0x000C..0x0022 and of
# RFC 8489's neighbours 0x8000..0x8001 as well).
unknown_types = st.integers(0x0040, 0x7FFF) | st.integers(0x8030, 0xFFFF)


def not_in_stun_table(code: int) -> bool:
    return code not in STUN_ATTRIBUTES


unknown_attributes = st.builds(
    UnknownAttribute, unknown_types.filter(not_in_stun_table), st.binary(max_size=24)
)


@st.composite
def messages(draw: st.DrawFn, tail: bool = True) -> Message:
    """A message of random known and unknown attributes, and an integrity tail."""
    attributes: list[Attribute] = draw(
        st.lists(st.one_of(known_attributes, unknown_attributes), max_size=8)
    )
    if tail:
        if draw(st.booleans()):
            attributes.append(MessageIntegrity())
        if draw(st.booleans()):
            attributes.append(
                MessageIntegritySHA256(length=draw(st.sampled_from(range(16, 33, 4))))
            )
        if draw(st.booleans()):
            attributes.append(Fingerprint())
    cookie = draw(st.one_of(st.just(MAGIC_COOKIE_BYTES), st.binary(min_size=4, max_size=4)))
    return Message(
        draw(st.integers(0, 0xFFF)),
        draw(st.sampled_from(list(MessageClass))),
        draw(st.binary(min_size=12, max_size=12)),
        attributes,
        cookie,
    )


@fast
@given(messages(tail=False), st.sampled_from([b"\x00", b" ", b"\xff"]))
def test_decode_inverts_encode(message: Message, pad: bytes) -> None:
    data = encode(message, pad=pad)
    decoded = decode(data, allow_rfc3489=True)
    assert decoded == message
    assert encode(decoded, pad=pad) == data


@fast
@given(messages(), st.binary(max_size=80))
def test_integrity_round_trip(message: Message, key: bytes) -> None:
    """
    With integrity and FINGERPRINT placeholders, the decoded message holds
    the plain attributes unchanged, computed values that verify, and
    re-encodes (with or without the key) to the same bytes.
    """
    data = encode(message, key=key)
    decoded = decode(data, allow_rfc3489=True)
    assert [type(a) for a in decoded.attributes] == [type(a) for a in message.attributes]
    computed = (MessageIntegrity, MessageIntegritySHA256, Fingerprint)
    plain = [a for a in message.attributes if type(a) not in computed]
    assert [a for a in decoded.attributes if type(a) not in computed] == plain
    signed = any(type(a) in computed[:2] for a in message.attributes)
    assert check_integrity(decoded, key) is signed
    if signed:
        assert not check_integrity(decoded, key + b"x")
    assert encode(decoded) == data
    assert encode(decoded, key=key) == data
    assert decode(data, allow_rfc3489=True) == decoded


@fast
@given(messages(), st.data())
def test_encode_inverts_decode(message: Message, data: st.DataObject) -> None:
    """encode(decode(b)) == b for every b the encoder can produce, padded alike."""
    pad = data.draw(st.binary(min_size=1, max_size=1))
    encoded = encode(message, key=KEY, pad=pad)
    assert encode(decode(encoded, allow_rfc3489=True), pad=pad) == encoded


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=100), st.binary(max_size=300))
def test_hmac_helper_agrees_with_hmac_module(key: bytes, data: bytes) -> None:
    assert keyed_hmac(key, data, SHA1) == hmac.digest(key, data, "sha1")
    assert keyed_hmac(key, data, SHA256) == hmac.digest(key, data, "sha256")
