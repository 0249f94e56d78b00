"""
The STUN codec's own behaviour: every attribute type there and back, the
placement rules of MESSAGE-INTEGRITY and FINGERPRINT, unknown attributes,
RFC 3489 messages, the message type's bit interleaving, and the credential
functions.  The RFC 5769 vectors are in C{test_stun_vectors}.
"""

from __future__ import annotations

import hashlib
import hmac
import socket
import struct
import zlib

import attrs
import pytest

from twisted_nat.errors import IntegrityError, STUNDecodeError
from twisted_nat.stun.attributes import (
    MAGIC_COOKIE_BYTES,
    PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
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
from twisted_nat.stun.credentials import (
    long_term_key,
    opaque_string,
    saslprep,
    short_term_key,
    userhash,
)
from twisted_nat.stun.message import (
    Message,
    MessageClass,
    Method,
    check_integrity,
    decode,
    encode,
    error_response,
    looks_like_stun,
    message_type,
    request,
    response_to,
    split_message_type,
    verify_integrity,
)
from twisted_nat.stun.message.integrity import SHA1, SHA256, HMACStates, keyed_hmac

TID = bytes(range(1, 13))
KEY = b"a shared secret"

# One or more values of every attribute class of the STUN table, with the
# corners of their encodings: both address families, values needing each
# amount of padding, the extremes of numeric fields.
SAMPLES: list[Attribute] = [
    MappedAddress("192.0.2.1", 32853),
    MappedAddress("2001:db8::1", 1),
    SourceAddress("198.51.100.7", 3478),
    ChangedAddress("203.0.113.9", 3479),
    ChangedAddress("::ffff:192.0.2.1", 65535),
    XorMappedAddress("192.0.2.1", 32853),
    XorMappedAddress("2001:db8:1234:5678:11:2233:4455:6677", 0),
    XorMappedAddress("0.0.0.0", 65535),
    XorMappedAddress("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 7),
    AlternateServer("2001:db8::2", 3478),
    ResponseOrigin("192.0.2.2", 3478),
    OtherAddress("2001:db8::3", 3479),
    Username("evtj:h6vY"),
    Username(""),
    Username("\u30de\u30c8\u30ea\u30c3\u30af\u30b9"),
    Realm("example.org"),
    Nonce("f//499k954d6OL34oL9FSTvy64sA"),
    Software("twisted-nat \U0001f980"),
    AlternateDomain("stun.example.org"),
    ErrorCode(300, "Try Alternate"),
    ErrorCode(420, ""),
    ErrorCode(438, "Stale Nonce"),
    ErrorCode(699, "r\u00e9sum\u00e9"),
    UnknownAttributes(()),
    UnknownAttributes((0x0002,)),
    UnknownAttributes((0x0000, 0x7FFF, 0x8000, 0xFFFF)),
    PasswordAlgorithm(PASSWORD_ALGORITHM_MD5),
    PasswordAlgorithm(PASSWORD_ALGORITHM_SHA256, b"xyz"),
    PasswordAlgorithms(()),
    PasswordAlgorithms(((PASSWORD_ALGORITHM_MD5, b""), (PASSWORD_ALGORITHM_SHA256, b"\x01"))),
    PasswordAlgorithms(((0xFFFF, b"12345"),)),
    ChangeRequest(),
    ChangeRequest(change_ip=True),
    ChangeRequest(change_port=True),
    ChangeRequest(change_ip=True, change_port=True),
    ResponsePort(0),
    ResponsePort(65535),
    Priority(0),
    Priority(0x6E0001FF),
    Priority(0xFFFFFFFF),
    UseCandidate(),
    IceControlled(0),
    IceControlled(0x932FF9B151263B36),
    IceControlling(0xFFFFFFFFFFFFFFFF),
    UserHash(bytes(range(32))),
    Padding(b""),
    Padding(b"\x00"),
    Padding(b"abc"),
    Padding(b"\xff" * 1000),
]


def bare(*attributes: Attribute, message_class: MessageClass = MessageClass.REQUEST) -> Message:
    return Message(Method.BINDING, message_class, TID, attributes)


def with_length(data: bytes | bytearray, length: int | None = None) -> bytes:
    """C{data} with its header's length field set to what follows the header."""
    out = bytearray(data)
    struct.pack_into("!H", out, 2, len(out) - 20 if length is None else length)
    return bytes(out)


# --- every attribute type, there and back ----------------------------------------


@pytest.mark.parametrize("attribute", SAMPLES, ids=repr)
@pytest.mark.parametrize("pad", [b"\x00", b" "], ids=["zero-pad", "space-pad"])
def test_attribute_round_trip(attribute: Attribute, pad: bytes) -> None:
    message = bare(attribute)
    data = encode(message, pad=pad)
    assert len(data) % 4 == 0
    assert decode(data) == message
    assert encode(decode(data), pad=pad) == data


def test_samples_cover_every_stun_attribute() -> None:
    """
    Every type of the STUN attribute table is exercised, the three computed
    ones by the tests below.  (TURN and the control messages extend the
    table with their own; those are theirs to test.)
    """
    computed = {MessageIntegrity.TYPE, MessageIntegritySHA256.TYPE, Fingerprint.TYPE}
    assert {type(a).TYPE for a in SAMPLES} | computed == set(STUN_ATTRIBUTES.decoders)


def test_all_samples_in_one_message() -> None:
    message = bare(*SAMPLES, MessageIntegrity(), Fingerprint())
    data = encode(message, key=KEY)
    decoded = decode(data)
    assert decoded.attributes[: len(SAMPLES)] == tuple(SAMPLES)
    assert check_integrity(decoded, KEY)
    assert encode(decoded, key=KEY) == data


def test_attribute_wire_layout() -> None:
    """Header, value and padding of one attribute, byte by byte."""
    data = encode(bare(Username("abcde")), pad=b"\xee")
    assert data[20:] == bytes.fromhex("0006 0005") + b"abcde" + b"\xee" * 3
    assert data[:4] == bytes.fromhex("0001 000c")


def test_xor_address_depends_on_the_transaction_id_for_ipv6_only() -> None:
    v4, v6 = XorMappedAddress("192.0.2.1", 1), XorMappedAddress("2001:db8::1", 1)
    other = bytes(12)
    assert v4.encode_value(TID) == v4.encode_value(other)
    assert v6.encode_value(TID) != v6.encode_value(other)
    assert XorMappedAddress.decode_value(v6.encode_value(other), other) == v6


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\x00\x01\x00",
        b"\x00\x03\x00\x01\x7f\x00\x00\x01",  # family 3
        b"\x00\x01\x00\x01\x7f\x00\x00",  # IPv4, 3 address bytes
        b"\x00\x02\x00\x01" + bytes(15),  # IPv6, 15 address bytes
        b"\x00\x01\x00\x01" + bytes(16),  # IPv4 family with IPv6 length
    ],
)
@pytest.mark.parametrize("kind", [MappedAddress, XorMappedAddress])
def test_bad_addresses_are_refused(kind: type[Attribute], value: bytes) -> None:
    data = encode(bare(UnknownAttribute(kind.TYPE, value)))
    with pytest.raises(STUNDecodeError):
        decode(data)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        (Username, b"\xff\xfe"),
        (ErrorCode, b"\x00\x00\x04"),
        (ErrorCode, b"\x00\x00\x02\x00"),  # class 2
        (ErrorCode, b"\x00\x00\x07\x00"),  # class 7
        (ErrorCode, b"\x00\x00\x04\x64"),  # number 100
        (UnknownAttributes, b"\x00\x01\x00"),
        (PasswordAlgorithm, b""),
        (PasswordAlgorithm, b"\x00\x01\x00\x00\x00\x02\x00\x00"),  # two of them
        (PasswordAlgorithm, b"\x00\x01\x00\x08\x00\x00\x00\x00"),  # parameters overrun
        (PasswordAlgorithms, b"\x00\x01\x00"),
        (ChangeRequest, b"\x00\x00\x00"),
        (ResponsePort, b"\x00\x01"),
        (Priority, b"\x00\x00\x00\x00\x00"),
        (UseCandidate, b"\x00"),
        (IceControlled, bytes(4)),
        (IceControlling, bytes(9)),
        (UserHash, bytes(31)),
        (MessageIntegrity, bytes(19)),
        (MessageIntegritySHA256, bytes(12)),
        (MessageIntegritySHA256, bytes(18)),
        (MessageIntegritySHA256, bytes(36)),
    ],
)
def test_malformed_values_are_refused(kind: type[Attribute], value: bytes) -> None:
    head = struct.pack("!HH", kind.TYPE, len(value))
    body = head + value + bytes(-len(value) % 4)
    data = with_length(struct.pack("!HH4s12s", 0x0001, 0, MAGIC_COOKIE_BYTES, TID) + body)
    with pytest.raises(STUNDecodeError):
        decode(data)


def test_error_code_values() -> None:
    assert ErrorCode(487).encode_value(TID) == b"\x00\x00\x04\x57"
    assert ErrorCode.for_code(401) == ErrorCode(401, "Unauthenticated")
    assert ErrorCode.for_code(599).reason == "Error"
    for code in (299, 700, 0):
        with pytest.raises(ValueError):
            ErrorCode(code)


def test_change_request_flags() -> None:
    assert ChangeRequest(True, False).encode_value(TID) == b"\x00\x00\x00\x04"
    assert ChangeRequest(False, True).encode_value(TID) == b"\x00\x00\x00\x02"


def test_password_algorithm_parameters_are_padded_inside_the_value() -> None:
    value = PasswordAlgorithm(PASSWORD_ALGORITHM_SHA256, b"xyz").encode_value(TID)
    assert value == b"\x00\x02\x00\x03xyz\x00"


# --- MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT ----------------------------------


def test_message_integrity_sha1() -> None:
    data = encode(bare(Username("u"), MessageIntegrity()), key=KEY)
    decoded = decode(data)
    integrity = decoded.get(MessageIntegrity)
    assert integrity is not None
    expected = hmac.new(KEY, with_length(data[:-24], len(data) - 20), hashlib.sha1).digest()
    assert integrity.hmac == expected
    assert check_integrity(decoded, KEY)
    assert not check_integrity(decoded, KEY + b"!")


@pytest.mark.parametrize("length", [16, 20, 24, 28, 32])
def test_message_integrity_sha256_full_and_truncated(length: int) -> None:
    message = bare(Software("s"), MessageIntegritySHA256(length=length), Fingerprint())
    data = encode(message, key=KEY)
    decoded = decode(data)
    integrity = decoded.get(MessageIntegritySHA256)
    assert integrity == MessageIntegritySHA256(integrity.hmac if integrity else b"", length)
    assert integrity is not None and len(integrity.hmac) == length
    covered = with_length(data[: -(8 + 4 + length)], len(data) - 20 - 8)
    assert integrity.hmac == hmac.new(KEY, covered, hashlib.sha256).digest()[:length]
    assert check_integrity(decoded, KEY)
    assert not check_integrity(decoded, b"another key")
    assert encode(decoded, key=KEY) == data
    assert encode(decoded) == data


@pytest.mark.parametrize("length", [0, 4, 12, 15, 33, 36])
def test_message_integrity_sha256_lengths_outside_16_to_32_are_refused(length: int) -> None:
    with pytest.raises(ValueError):
        MessageIntegritySHA256(length=length)


def test_both_integrity_attributes_sha256_preferred() -> None:
    """
    With both, RFC 8489 14.6 prefers MESSAGE-INTEGRITY-SHA256: spoiling it
    fails the check even though MESSAGE-INTEGRITY still verifies.
    """
    data = encode(bare(Username("u"), MessageIntegrity(), MessageIntegritySHA256()), key=KEY)
    assert check_integrity(decode(data), KEY)
    spoiled = bytearray(data)
    spoiled[-1] ^= 1
    assert not check_integrity(decode(bytes(spoiled)), KEY)
    # Spoiling MESSAGE-INTEGRITY instead breaks the SHA-256 HMAC covering it.
    spoiled = bytearray(data)
    spoiled[-36 - 1] ^= 1
    assert not check_integrity(decode(bytes(spoiled)), KEY)


def test_integrity_without_key_or_hmac_is_refused() -> None:
    with pytest.raises(ValueError):
        encode(bare(MessageIntegrity()))
    with pytest.raises(ValueError):
        encode(bare(MessageIntegritySHA256()))


def test_integrity_ordering_enforced_by_encoder() -> None:
    for attributes in (
        (MessageIntegrity(), Username("late")),
        (MessageIntegritySHA256(), MessageIntegrity()),
        (MessageIntegrity(), MessageIntegrity()),
        (MessageIntegritySHA256(), MessageIntegritySHA256()),
        (Fingerprint(), Username("late")),
        (Fingerprint(), MessageIntegrity()),
        (Fingerprint(), Fingerprint()),
    ):
        with pytest.raises(ValueError):
            encode(bare(*attributes), key=KEY)


def test_raw_stand_ins_for_computed_attributes_are_refused() -> None:
    for code in (MessageIntegrity.TYPE, MessageIntegritySHA256.TYPE, Fingerprint.TYPE):
        with pytest.raises(ValueError):
            encode(bare(UnknownAttribute(code, bytes(20))), key=KEY)


def test_attributes_after_message_integrity_are_ignored() -> None:
    data = encode(bare(Username("u"), MessageIntegrity()), key=KEY)
    extended = with_length(data + encode(bare(Software("tacked on"), Priority(1)))[20:])
    decoded = decode(extended)
    assert decoded.attributes == decode(data).attributes
    assert check_integrity(decoded, KEY)


def test_integrity_and_fingerprint_after_message_integrity_are_kept() -> None:
    data = encode(
        bare(Username("u"), MessageIntegrity(), MessageIntegritySHA256(), Fingerprint()), key=KEY
    )
    kinds = [type(a) for a in decode(data).attributes]
    assert kinds == [Username, MessageIntegrity, MessageIntegritySHA256, Fingerprint]


def test_repeated_integrity_attributes_are_refused() -> None:
    data = encode(bare(Username("u"), MessageIntegrity()), key=KEY)
    twice = with_length(data + data[-24:])
    with pytest.raises(STUNDecodeError):
        decode(twice)
    data = encode(bare(MessageIntegritySHA256(length=16)), key=KEY)
    with pytest.raises(STUNDecodeError):
        decode(with_length(data + data[-20:]))
    # MESSAGE-INTEGRITY after MESSAGE-INTEGRITY-SHA256 is out of order.
    mi = encode(bare(MessageIntegrity()), key=KEY)[-24:]
    with pytest.raises(STUNDecodeError):
        decode(with_length(data + mi))


def test_fingerprint_value() -> None:
    data = encode(bare(Username("u"), Fingerprint()))
    crc = zlib.crc32(data[:-8]) ^ 0x5354554E
    assert data[-8:] == struct.pack("!HHI", 0x8028, 4, crc)
    assert decode(data).get(Fingerprint) == Fingerprint(crc)


def test_fingerprint_not_last_is_refused() -> None:
    data = encode(bare(Username("u"), Fingerprint()))
    with pytest.raises(STUNDecodeError, match="last"):
        decode(with_length(data + encode(bare(Priority(1)))[20:]))


def test_bad_fingerprint_is_refused() -> None:
    data = bytearray(encode(bare(Username("u"), Fingerprint())))
    data[-1] ^= 0x80
    with pytest.raises(STUNDecodeError, match="FINGERPRINT"):
        decode(bytes(data))
    # The CRC covers the header too.
    data = bytearray(encode(bare(Username("u"), Fingerprint())))
    data[10] ^= 1
    with pytest.raises(STUNDecodeError):
        decode(bytes(data))


def test_fingerprint_of_wrong_length_is_refused() -> None:
    data = encode(bare(Username("u")))
    crc = struct.pack("!I", zlib.crc32(data) ^ 0x5354554E)
    with pytest.raises(STUNDecodeError):
        decode(with_length(data + struct.pack("!HH", 0x8028, 8) + crc * 2))


def test_verify_integrity_errors() -> None:
    with pytest.raises(IntegrityError, match="no MESSAGE-INTEGRITY"):
        verify_integrity(decode(encode(bare(Username("u")))), KEY)
    with pytest.raises(IntegrityError, match="does not verify"):
        verify_integrity(decode(encode(bare(MessageIntegrity()), key=KEY)), b"wrong")
    assert not check_integrity(bare(MessageIntegrity(bytes(20))), KEY)  # never decoded


def test_hmac_helper_matches_the_hmac_module() -> None:
    """
    The codec writes HMAC out itself (L{keyed_hmac}): it must agree with the
    standard library for short, block-sized and long keys, for both hashes,
    and after its cache of keyed states has been flushed.
    """
    data = bytes(range(200))
    for size in (0, 1, 20, 63, 64, 65, 200):
        key = bytes((i * 7) & 0xFF for i in range(size))
        for name, states in (("sha1", SHA1), ("sha256", SHA256)):
            for _ in range(2):  # computed, then from the cache
                assert keyed_hmac(key, data, states) == hmac.digest(key, data, name)
    for index in range(HMACStates.LIMIT + 5):
        key = index.to_bytes(4, "big")
        assert keyed_hmac(key, data, SHA1) == hmac.digest(key, data, "sha1")
    assert len(SHA1) <= HMACStates.LIMIT
    # Keys that are bytes-like but not bytes (unhashable) still work.
    assert keyed_hmac(bytearray(b"k"), data, SHA1) == hmac.digest(  # type: ignore[arg-type]
        b"k", data, "sha1"
    )


# --- unknown attributes ------------------------------------------------------------


def test_unknown_attributes_round_trip_raw() -> None:
    unknown = (
        UnknownAttribute(0x0002, b"\x00\x01\x0d\x96\xc0\x00\x02\x01"),  # RESPONSE-ADDRESS
        UnknownAttribute(0x7FFF, b"abc"),
        UnknownAttribute(0xC001, b""),
        UnknownAttribute(0x8FFF, bytes(range(17))),
    )
    for pad in (b"\x00", b"\xaa"):
        data = encode(bare(*unknown), pad=pad)
        decoded = decode(data)
        assert decoded.attributes == unknown
        assert encode(decoded, pad=pad) == data


def test_unknown_comprehension_required() -> None:
    data = encode(
        bare(
            UnknownAttribute(0x0002, b"x"),
            Username("known"),
            UnknownAttribute(0x8001, b"optional"),
            UnknownAttribute(0x7FFF, b""),
            UnknownAttribute(0xFFFF, b""),
        )
    )
    decoded = decode(data)
    assert decoded.unknown_comprehension_required() == (0x0002, 0x7FFF)
    assert decode(encode(bare(Username("x"), Software("y")))).unknown_comprehension_required() == ()


def test_unknown_attributes_after_integrity_are_not_reported() -> None:
    data = encode(bare(MessageIntegrity()), key=KEY)
    extended = with_length(data + encode(bare(UnknownAttribute(0x0002, b"late")))[20:])
    assert decode(extended).unknown_comprehension_required() == ()


# --- header and framing ------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        bytes(19),
        b"\x40\x01\x00\x00" + MAGIC_COOKIE_BYTES + TID,  # first bits not zero
        b"\x00\x01\x00\x04" + MAGIC_COOKIE_BYTES + TID,  # length beyond the data
        b"\x00\x01\x00\x02" + MAGIC_COOKIE_BYTES + TID + b"\x00\x00",  # length not 4n
        b"\x00\x01\x00\x00" + MAGIC_COOKIE_BYTES + TID + bytes(4),  # trailing bytes
        b"\x00\x01\x00\x04" + MAGIC_COOKIE_BYTES + TID + b"\x00\x06\x00\x08",  # overrun
        b"\x00\x01\x00\x08" + MAGIC_COOKIE_BYTES + TID + b"\x00\x06\x00\x05abcd",  # pad overrun
    ],
)
def test_malformed_framing_is_refused(data: bytes) -> None:
    with pytest.raises(STUNDecodeError):
        decode(data)
    with pytest.raises(STUNDecodeError):
        decode(data, allow_rfc3489=True)


def test_decode_accepts_bytes_like_input() -> None:
    data = encode(bare(Username("u"), Fingerprint()))
    assert decode(bytearray(data)) == decode(data)  # type: ignore[arg-type]
    assert decode(memoryview(data)) == decode(data)  # type: ignore[arg-type]


def test_decode_refuses_non_bytes_with_its_own_error() -> None:
    with pytest.raises(STUNDecodeError):
        decode("not bytes")  # type: ignore[arg-type]


def test_looks_like_stun() -> None:
    data = encode(bare(Username("u")))
    assert looks_like_stun(data)
    assert not looks_like_stun(data[:-4])
    assert not looks_like_stun(b"\x80" + data[1:])  # RTP-like first byte
    assert not looks_like_stun(data[:4] + b"\x00\x00\x00\x00" + data[8:])
    assert not looks_like_stun(data[:19])


def test_rfc3489_messages_refused_by_default_accepted_when_asked() -> None:
    """
    An RFC 3489 agent's 128-bit transaction id fills the cookie's place; the
    codec keeps its first 32 bits as the cookie and echoes them back.
    """
    legacy_tid = bytes(range(0xA0, 0xB0))
    body = MappedAddress("192.0.2.1", 3478)
    head = struct.pack("!HH16s", 0x0001, 12, legacy_tid)
    data = head + encode(bare(body))[20:]
    assert not looks_like_stun(data)
    with pytest.raises(STUNDecodeError, match="magic cookie"):
        decode(data)
    decoded = decode(data, allow_rfc3489=True)
    assert decoded.is_rfc3489
    assert decoded.cookie == legacy_tid[:4]
    assert decoded.transaction_id == legacy_tid[4:]
    assert decoded.attributes == (body,)
    response = response_to(decoded, (MappedAddress("192.0.2.9", 1),))
    assert response.is_rfc3489
    assert encode(response)[4:20] == legacy_tid
    assert encode(decoded) == data


def test_header_fields_are_checked_by_the_encoder() -> None:
    for message in (
        Message(0x1000, MessageClass.REQUEST, TID),
        Message(-1, MessageClass.REQUEST, TID),
        Message(Method.BINDING, MessageClass.REQUEST, TID, cookie=b"\x21\x12\xa4"),
        Message(Method.BINDING, 4, TID),  # type: ignore[arg-type]
    ):
        with pytest.raises(ValueError):
            encode(message)
    with pytest.raises(ValueError):
        Message(Method.BINDING, MessageClass.REQUEST, TID[:11])


@pytest.mark.parametrize("pad", [b"", b"  ", 0x20])
def test_padding_must_be_one_byte(pad: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        encode(bare(Username("u")), pad=pad)  # type: ignore[arg-type]


def test_padding_may_be_any_bytes_like() -> None:
    message = bare(Username("u"))
    assert encode(message, pad=bytearray(b"\xaa")) == encode(message, pad=b"\xaa")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "attribute",
    [
        Priority(2**32),
        IceControlled(-1),
        ResponsePort(65536),
        MappedAddress("192.0.2.1", 70000),
        MappedAddress("not an address", 1),
        XorMappedAddress("2001:db8::zz", 1),
        UnknownAttributes((0x10000,)),
        Padding(bytes(0x10000)),
        PasswordAlgorithm(0x10000),
    ],
    ids=repr,
)
def test_unencodable_values_raise_value_error(attribute: Attribute) -> None:
    with pytest.raises(ValueError):
        encode(bare(attribute))


def test_message_too_long() -> None:
    with pytest.raises(ValueError):
        encode(bare(Padding(bytes(0xFFF0)), Padding(bytes(0x20))))


# --- message type ------------------------------------------------------------------


def interleave(method: int, message_class: int) -> int:
    """
    The message type of RFC 8489 figure 3, one bit at a time:
    M11..M7 C1 M6..M4 C0 M3..M0, most significant first.
    """
    layout = [f"M{i}" for i in (11, 10, 9, 8, 7)] + ["C1"]
    layout += [f"M{i}" for i in (6, 5, 4)] + ["C0"] + [f"M{i}" for i in (3, 2, 1, 0)]
    value = 0
    for name in layout:
        source = method if name[0] == "M" else message_class
        value = (value << 1) | ((source >> int(name[1:])) & 1)
    return value


METHODS = [0x000, 0x001, 0x003, 0x004, 0x006, 0x007, 0x008, 0x009, 0x00F, 0x010, 0x07F]
METHODS += [0x080, 0x0FF, 0x555, 0xAAA, 0xABC, 0xFFF]


@pytest.mark.parametrize("method", METHODS, ids=hex)
@pytest.mark.parametrize("message_class", list(MessageClass), ids=lambda c: c.name)
def test_message_type_interleaving(method: int, message_class: MessageClass) -> None:
    value = message_type(method, message_class)
    assert value == interleave(method, message_class)
    assert value < 0x4000
    assert split_message_type(value) == (method, message_class)
    data = encode(Message(method, message_class, TID))
    assert struct.unpack("!H", data[:2])[0] == value
    decoded = decode(data)
    assert decoded.method == method
    assert decoded.message_class is message_class
    assert type(decoded.method) is (Method if method in set(Method) else int)


@pytest.mark.parametrize(
    ("method", "message_class", "value"),
    [
        (Method.BINDING, MessageClass.REQUEST, 0x0001),
        (Method.BINDING, MessageClass.INDICATION, 0x0011),
        (Method.BINDING, MessageClass.SUCCESS, 0x0101),
        (Method.BINDING, MessageClass.ERROR, 0x0111),
        (Method.ALLOCATE, MessageClass.REQUEST, 0x0003),
        (Method.ALLOCATE, MessageClass.SUCCESS, 0x0103),
        (Method.ALLOCATE, MessageClass.ERROR, 0x0113),
        (Method.REFRESH, MessageClass.REQUEST, 0x0004),
        (Method.SEND, MessageClass.INDICATION, 0x0016),
        (Method.DATA, MessageClass.INDICATION, 0x0017),
        (Method.CREATE_PERMISSION, MessageClass.REQUEST, 0x0008),
        (Method.CHANNEL_BIND, MessageClass.REQUEST, 0x0009),
        (0xFFF, MessageClass.ERROR, 0x3FFF),
    ],
)
def test_message_types_from_the_rfcs(method: int, message_class: MessageClass, value: int) -> None:
    """The values RFC 8489 and RFC 8656 (TURN) give for their methods."""
    assert message_type(method, message_class) == value


# --- building messages -------------------------------------------------------------


def test_request_and_responses() -> None:
    req = request(attributes=[Username("u")])
    assert req.message_class is MessageClass.REQUEST and req.method is Method.BINDING
    assert len(req.transaction_id) == 12
    assert request().transaction_id != req.transaction_id
    assert request(transaction_id=TID).transaction_id == TID
    ok = response_to(req, [XorMappedAddress("192.0.2.1", 1)])
    assert (ok.transaction_id, ok.message_class) == (req.transaction_id, MessageClass.SUCCESS)
    error = error_response(req, 420, UnknownAttributes((0x0002,)))
    assert error.message_class is MessageClass.ERROR
    assert error.error() == ErrorCode(420, "Unknown Attribute")
    assert error.get(UnknownAttributes) == UnknownAttributes((0x0002,))
    assert ok.error() is None and ok.get(Username) is None
    assert decode(encode(error)) == error


def test_attributes_are_converted_to_a_tuple() -> None:
    message = Message(Method.BINDING, MessageClass.REQUEST, TID, [Username("u")])
    assert message.attributes == (Username("u"),)
    assert message == Message(Method.BINDING, MessageClass.REQUEST, TID, (Username("u"),))


def test_decoded_messages_equal_constructed_ones() -> None:
    """
    The decoder builds messages and attributes without calling their
    classes; what it builds must behave exactly like what the classes build.
    """
    attributes = (
        Username("u"),
        Priority(5),
        IceControlling(6),
        XorMappedAddress("192.0.2.1", 7),
        MappedAddress("2001:db8::1", 8),
        MessageIntegrity(),
        Fingerprint(),
    )
    decoded = decode(encode(bare(*attributes), key=KEY))
    rebuilt = Message(
        decoded.method,
        decoded.message_class,
        decoded.transaction_id,
        decoded.attributes,
        decoded.cookie,
    )
    assert decoded == rebuilt and hash(decoded) == hash(rebuilt)
    assert repr(decoded) == repr(rebuilt)
    for got in decoded.attributes:
        fields = attrs.asdict(got, recurse=False)
        assert got == type(got)(**fields)
        assert hash(got) == hash(type(got)(**fields))
    username = decoded.get(Username)
    assert username is not None
    with pytest.raises(AttributeError):
        username.value = "changed"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        decoded.method = 2  # type: ignore[misc]


# --- credentials -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "prepared"),
    [
        ("password", "password"),
        ("Pass Word", "Pass Word"),  # case and ASCII space kept
        ("a\u00a0b", "a b"),  # NO-BREAK SPACE
        ("a\u3000b", "a b"),  # IDEOGRAPHIC SPACE
        ("a\u2003b", "a b"),  # EM SPACE
        ("e\u0301", "\u00e9"),  # NFC composes
        ("\uff21", "\uff21"),  # no width mapping in OpaqueString
        ("\u2168", "\u2168"),  # nor compatibility folding (that is NFKC)
        ("\u30de\u30c8\u30ea\u30c3\u30af\u30b9", "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"),
    ],
)
def test_opaque_string_mapping(raw: str, prepared: str) -> None:
    assert opaque_string(raw) == prepared


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "\x00",
        "a\x07b",
        "tab\t",
        "\x7f",
        "zero\u200bwidth",  # Cf
        "The\u00adM\u00aatr\u2168",  # SOFT HYPHEN (Cf): RFC 5769's raw password
        "\ue000",  # private use
        "\u0378",  # unassigned
        "line\u2028separator",
        "para\u2029separator",
        "\ud800",  # lone surrogate
    ],
)
def test_opaque_string_refusals(raw: str) -> None:
    with pytest.raises(ValueError):
        opaque_string(raw)


@pytest.mark.parametrize(
    ("raw", "prepared"),
    [
        # RFC 4013 section 3's examples.
        ("I\u00adX", "IX"),
        ("user", "user"),
        ("USER", "USER"),
        ("\u00aa", "a"),
        ("\u2168", "IX"),
        # RFC 5769 2.4's password.
        ("The\u00adM\u00aatr\u2168", "TheMatrIX"),
        ("a\u00a0b", "a b"),
        ("\u0627\u0628", "\u0627\u0628"),  # all right-to-left
    ],
)
def test_saslprep(raw: str, prepared: str) -> None:
    assert saslprep(raw) == prepared


@pytest.mark.parametrize("raw", ["\u0007", "\u0627\u0031", "a\u0627", "\ue000", "\ufffe"])
def test_saslprep_refusals(raw: str) -> None:
    """RFC 4013's prohibited output and bidirectional rules."""
    with pytest.raises(ValueError):
        saslprep(raw)


def test_short_term_key() -> None:
    assert short_term_key("pass\u00a0word") == b"pass word"
    assert short_term_key("e\u0301") == "\u00e9".encode()


def test_long_term_key_md5_known_answer() -> None:
    expected = hashlib.md5(b"user:realm:pass", usedforsecurity=False).digest()
    assert long_term_key("user", "realm", "pass") == expected
    assert long_term_key("user", "realm", "pass", PASSWORD_ALGORITHM_MD5) == expected
    assert long_term_key("user", "realm", "pass", prep=saslprep) == expected


def test_long_term_key_sha256_known_answer() -> None:
    expected = hashlib.sha256(b"user:realm:pass").digest()
    assert long_term_key("user", "realm", "pass", PASSWORD_ALGORITHM_SHA256) == expected


def test_long_term_key_prepares_realm_and_password_not_username() -> None:
    prepared = long_term_key("u\u00a0x", "r\u00a0x", "p\u00a0x")
    expected = hashlib.md5("u\u00a0x:r x:p x".encode(), usedforsecurity=False).digest()
    assert prepared == expected


def test_long_term_key_unknown_algorithm() -> None:
    with pytest.raises(ValueError):
        long_term_key("user", "realm", "pass", algorithm=0x0003)


def test_userhash() -> None:
    assert userhash("user", "realm") == hashlib.sha256(b"user:realm").digest()
    assert userhash("u\u00a0x", "r") == hashlib.sha256(b"u x:r").digest()


def test_userhash_known_answer_from_rfc8489() -> None:
    """RFC 8489 appendix B.1's USERHASH, for RFC 5769's username and realm."""
    expected = bytes.fromhex("4a3cf38fef6992bda952c6780417da0f24819415569e60b205c46e41407f1704")
    assert userhash("\u30de\u30c8\u30ea\u30c3\u30af\u30b9", "example.org") == expected
    assert decode(encode(bare(UserHash(expected)))).get(UserHash) == UserHash(expected)


def test_ipv6_hosts_decode_in_canonical_form() -> None:
    for host in ("2001:0db8:0000:0000:0000:0000:0000:0001", "2001:DB8::1"):
        decoded = decode(encode(bare(XorMappedAddress(host, 1))))
        canonical = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host))
        assert decoded.get(XorMappedAddress) == XorMappedAddress(canonical, 1)
