"""
The test vectors of RFC 5769 ("Test Vectors for Session Traversal
Utilities for NAT (STUN)", April 2010), sections 2.1 to 2.4.

The bytes are those printed in the RFC, one line per line of its figures.
They are the only messages here that nobody on this project encoded, so
they are what catches a codec agreeing with itself about something wrong:
the HMAC input, the CRC input, the XOR of addresses, SASLprep of the
long-term password.

The vectors pad with spaces (0x20) where a value is not a multiple of four
bytes long, except 2.4, which pads with zeros; hence the C{pad} argument
when re-encoding.
"""

from __future__ import annotations

import hashlib

import attrs
import pytest

from twisted_nat.errors import IntegrityError, STUNDecodeError
from twisted_nat.stun.attributes import (
    Attribute,
    Fingerprint,
    IceControlled,
    MessageIntegrity,
    Nonce,
    Priority,
    Realm,
    Software,
    Username,
    XorMappedAddress,
    pack_xor_address,
    unpack_xor_address,
)
from twisted_nat.stun.credentials import long_term_key, saslprep, short_term_key
from twisted_nat.stun.message import (
    Message,
    MessageClass,
    Method,
    check_integrity,
    decode,
    encode,
    looks_like_stun,
    verify_integrity,
)


def unhex(text: str) -> bytes:
    """The RFC's figures, hex pairs and whitespace, as bytes."""
    return bytes.fromhex("".join(text.split()))


SHORT_TERM_PASSWORD = "VOkJxbRl1RmTxUk/WvJxBt"

# 2.4: the username is unaffected by SASLprep; the password is given before
# and after it (SOFT HYPHEN vanishes, the ordinal and the numeral fold).
LONG_TERM_USERNAME = "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
LONG_TERM_PASSWORD = "The\u00adM\u00aatr\u2168"
LONG_TERM_PASSWORD_PREPARED = "TheMatrIX"
NONCE = "f//499k954d6OL34oL9FSTvy64sA"
REALM = "example.org"

SAMPLE_TID = unhex("b7 e7 a7 01 bc 34 d6 86 fa 87 df ae")
LONG_TERM_TID = unhex("78 ad 34 33 c6 ad 72 c0 29 da 41 2e")

# 2.1 Sample Request
SAMPLE_REQUEST = unhex(
    """
    00 01 00 58
    21 12 a4 42
    b7 e7 a7 01
    bc 34 d6 86
    fa 87 df ae
    80 22 00 10
    53 54 55 4e
    20 74 65 73
    74 20 63 6c
    69 65 6e 74
    00 24 00 04
    6e 00 01 ff
    80 29 00 08
    93 2f f9 b1
    51 26 3b 36
    00 06 00 09
    65 76 74 6a
    3a 68 36 76
    59 20 20 20
    00 08 00 14
    9a ea a7 0c
    bf d8 cb 56
    78 1e f2 b5
    b2 d3 f2 49
    c1 b5 71 a2
    80 28 00 04
    e5 7a 3b cf
    """
)

# 2.2 Sample IPv4 Response
SAMPLE_IPV4_RESPONSE = unhex(
    """
    01 01 00 3c
    21 12 a4 42
    b7 e7 a7 01
    bc 34 d6 86
    fa 87 df ae
    80 22 00 0b
    74 65 73 74
    20 76 65 63
    74 6f 72 20
    00 20 00 08
    00 01 a1 47
    e1 12 a6 43
    00 08 00 14
    2b 91 f5 99
    fd 9e 90 c3
    8c 74 89 f9
    2a f9 ba 53
    f0 6b e7 d7
    80 28 00 04
    c0 7d 4c 96
    """
)

# 2.3 Sample IPv6 Response
SAMPLE_IPV6_RESPONSE = unhex(
    """
    01 01 00 48
    21 12 a4 42
    b7 e7 a7 01
    bc 34 d6 86
    fa 87 df ae
    80 22 00 0b
    74 65 73 74
    20 76 65 63
    74 6f 72 20
    00 20 00 14
    00 02 a1 47
    01 13 a9 fa
    a5 d3 f1 79
    bc 25 f4 b5
    be d2 b9 d9
    00 08 00 14
    a3 82 95 4e
    4b e6 7b f1
    17 84 c9 7c
    82 92 c2 75
    bf e3 ed 41
    80 28 00 04
    c8 fb 0b 4c
    """
)

# 2.4 Sample Request with Long-Term Authentication (no FINGERPRINT)
LONG_TERM_REQUEST = unhex(
    """
    00 01 00 60
    21 12 a4 42
    78 ad 34 33
    c6 ad 72 c0
    29 da 41 2e
    00 06 00 12
    e3 83 9e e3
    83 88 e3 83
    aa e3 83 83
    e3 82 af e3
    82 b9 00 00
    00 15 00 1c
    66 2f 2f 34
    39 39 6b 39
    35 34 64 36
    4f 4c 33 34
    6f 4c 39 46
    53 54 76 79
    36 34 73 41
    00 14 00 0b
    65 78 61 6d
    70 6c 65 2e
    6f 72 67 00
    00 08 00 14
    f6 70 24 65
    6d d6 4a 3e
    02 b8 e0 71
    2e 85 c9 a2
    8c a8 96 66
    """
)


def short_key() -> bytes:
    return short_term_key(SHORT_TERM_PASSWORD, prep=saslprep)


def long_key() -> bytes:
    return long_term_key(LONG_TERM_USERNAME, REALM, LONG_TERM_PASSWORD, prep=saslprep)


@attrs.frozen
class Vector:
    """One RFC 5769 message and everything the RFC says it holds."""

    name: str
    data: bytes
    message_class: MessageClass
    transaction_id: bytes
    attributes: tuple[Attribute, ...]
    key: bytes
    pad: bytes


VECTORS = [
    Vector(
        "2.1 sample request",
        SAMPLE_REQUEST,
        MessageClass.REQUEST,
        SAMPLE_TID,
        (
            Software("STUN test client"),
            Priority(0x6E0001FF),
            IceControlled(0x932FF9B151263B36),
            Username("evtj:h6vY"),
            MessageIntegrity(unhex("9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2")),
            Fingerprint(0xE57A3BCF),
        ),
        short_key(),
        b" ",
    ),
    Vector(
        "2.2 sample IPv4 response",
        SAMPLE_IPV4_RESPONSE,
        MessageClass.SUCCESS,
        SAMPLE_TID,
        (
            Software("test vector"),
            XorMappedAddress("192.0.2.1", 32853),
            MessageIntegrity(unhex("2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7")),
            Fingerprint(0xC07D4C96),
        ),
        short_key(),
        b" ",
    ),
    Vector(
        "2.3 sample IPv6 response",
        SAMPLE_IPV6_RESPONSE,
        MessageClass.SUCCESS,
        SAMPLE_TID,
        (
            Software("test vector"),
            XorMappedAddress("2001:db8:1234:5678:11:2233:4455:6677", 32853),
            MessageIntegrity(unhex("a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41")),
            Fingerprint(0xC8FB0B4C),
        ),
        short_key(),
        b" ",
    ),
    Vector(
        "2.4 sample request with long-term authentication",
        LONG_TERM_REQUEST,
        MessageClass.REQUEST,
        LONG_TERM_TID,
        (
            Username(LONG_TERM_USERNAME),
            Nonce(NONCE),
            Realm(REALM),
            MessageIntegrity(unhex("f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66")),
        ),
        long_key(),
        b"\x00",
    ),
]

vectors = pytest.mark.parametrize("vector", VECTORS, ids=[v.name for v in VECTORS])


def test_vector_lengths_match_their_headers() -> None:
    """
    A typo while copying the figures would most likely drop or add a byte;
    the length field each figure starts with would then disagree.
    """
    assert [len(v.data) for v in VECTORS] == [108, 80, 92, 116]
    for vector in VECTORS:
        assert int.from_bytes(vector.data[2:4], "big") == len(vector.data) - 20


@vectors
def test_decodes_to_what_the_rfc_describes(vector: Vector) -> None:
    message = decode(vector.data)
    assert message.method == Method.BINDING
    assert type(message.method) is Method
    assert message.message_class == vector.message_class
    assert message.transaction_id == vector.transaction_id
    assert not message.is_rfc3489
    assert message.attributes == vector.attributes
    assert message.unknown_comprehension_required() == ()
    assert looks_like_stun(vector.data)


@vectors
def test_integrity_verifies_with_the_right_key(vector: Vector) -> None:
    message = decode(vector.data)
    assert check_integrity(message, vector.key)
    verify_integrity(message, vector.key)


@vectors
@pytest.mark.parametrize(
    "wrong",
    [b"", b"VOkJxbRl1RmTxUk/WvJxBu", b"VOkJxbRl1RmTxUk/WvJxB", b"\x00" * 16],
    ids=["empty", "last-char", "truncated", "zeros"],
)
def test_integrity_fails_with_a_wrong_key(vector: Vector, wrong: bytes) -> None:
    message = decode(vector.data)
    assert not check_integrity(message, wrong)
    with pytest.raises(IntegrityError):
        verify_integrity(message, wrong)


@vectors
def test_every_flipped_bit_is_caught(vector: Vector) -> None:
    """
    Every single-bit error in the message is caught: the decoder refuses it
    (FINGERPRINT, structure, magic cookie) or the HMAC no longer verifies.

    One corner needs the receiver's help: flipping a bit of the FINGERPRINT
    attribute's own type turns it into an unknown attribute after
    MESSAGE-INTEGRITY, which is ignored (RFC 8489 14.5), so the message
    decodes and verifies without its FINGERPRINT.  A receiver that expects
    one (ICE, RFC 8445 7.2.2) sees it missing, so that counts as caught.
    """
    has_fingerprint = any(type(a) is Fingerprint for a in vector.attributes)
    for index in range(len(vector.data)):
        for bit in range(8):
            corrupt = bytearray(vector.data)
            corrupt[index] ^= 1 << bit
            try:
                message = decode(bytes(corrupt))
            except STUNDecodeError:
                continue
            caught = not check_integrity(message, vector.key) or (
                has_fingerprint and message.get(Fingerprint) is None
            )
            assert caught, f"bit {bit} of byte {index} flipped unnoticed"


@vectors
def test_reencoding_the_decoded_message_reproduces_the_vector(vector: Vector) -> None:
    assert encode(decode(vector.data), key=vector.key, pad=vector.pad) == vector.data


@vectors
def test_encoding_from_values_reproduces_the_vector(vector: Vector) -> None:
    """
    Built from the attribute values alone, with empty integrity and
    fingerprint placeholders, the encoder computes the RFC's HMAC and CRC.
    """
    placeholders = tuple(
        MessageIntegrity()
        if type(a) is MessageIntegrity
        else Fingerprint()
        if type(a) is Fingerprint
        else a
        for a in vector.attributes
    )
    message = Message(Method.BINDING, vector.message_class, vector.transaction_id, placeholders)
    assert encode(message, key=vector.key, pad=vector.pad) == vector.data


@vectors
def test_encoding_without_the_key_keeps_the_received_hmac(vector: Vector) -> None:
    assert encode(decode(vector.data), pad=vector.pad) == vector.data


@vectors
def test_other_padding_changes_only_the_padding_and_what_covers_it(vector: Vector) -> None:
    """
    RFC 8489 lets the sender pad with anything, so a message re-padded with
    other bytes still decodes to the same values and verifies.
    """
    other = b"\x00" if vector.pad == b" " else b" "
    data = encode(decode(vector.data), key=vector.key, pad=other)
    assert data != vector.data
    assert len(data) == len(vector.data)
    message = decode(data)
    assert check_integrity(message, vector.key)
    assert [type(a) for a in message.attributes] == [type(a) for a in vector.attributes]
    plain = (Software, Username, Nonce, Realm, XorMappedAddress, Priority, IceControlled)
    assert [a for a in message.attributes if isinstance(a, plain)] == [
        a for a in vector.attributes if isinstance(a, plain)
    ]


def test_short_term_key_is_the_password() -> None:
    assert short_key() == SHORT_TERM_PASSWORD.encode("ascii")
    assert short_term_key(SHORT_TERM_PASSWORD) == short_key()


def test_saslprep_of_the_long_term_password() -> None:
    assert saslprep(LONG_TERM_PASSWORD) == LONG_TERM_PASSWORD_PREPARED
    assert saslprep(LONG_TERM_USERNAME) == LONG_TERM_USERNAME


def test_long_term_key_is_md5_of_username_realm_and_prepared_password() -> None:
    material = f"{LONG_TERM_USERNAME}:{REALM}:{LONG_TERM_PASSWORD_PREPARED}".encode()
    assert material.startswith(unhex("e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9"))
    assert long_key() == hashlib.md5(material, usedforsecurity=False).digest()


def test_long_term_request_needs_the_prepared_password() -> None:
    """The unprepared password (soft hyphen and all) gives a key that fails."""
    unprepared = long_term_key(LONG_TERM_USERNAME, REALM, LONG_TERM_PASSWORD, prep=lambda s: s)
    assert unprepared != long_key()
    assert not check_integrity(decode(LONG_TERM_REQUEST), unprepared)


def test_short_term_key_does_not_verify_the_long_term_request() -> None:
    assert not check_integrity(decode(LONG_TERM_REQUEST), short_key())
    assert not check_integrity(decode(SAMPLE_REQUEST), long_key())


@pytest.mark.parametrize(
    ("host", "value"),
    [
        ("192.0.2.1", "00 01 a1 47 e1 12 a6 43"),
        (
            "2001:db8:1234:5678:11:2233:4455:6677",
            "00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9",
        ),
    ],
)
def test_xor_mapped_address_values(host: str, value: str) -> None:
    """The XOR-MAPPED-ADDRESS values of 2.2 and 2.3, on their own."""
    assert pack_xor_address(host, 32853, SAMPLE_TID) == unhex(value)
    assert unpack_xor_address(unhex(value), SAMPLE_TID) == (host, 32853)


def test_rfc5769_vectors_are_not_rfc3489_messages() -> None:
    for vector in VECTORS:
        assert decode(vector.data, allow_rfc3489=True) == decode(vector.data)
