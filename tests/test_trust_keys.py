"""L{twisted_nat.trust.keys}: a peer's printed key and our key pair."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from twisted_nat.errors import BadKey, TrustError
from twisted_nat.trust import KEY_PREFIX, Identity, PeerKey

# RFC 8032 section 7.1, test 1: the secret key, its public key and the
# signature of the empty message.
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_round_trip() -> None:
    key = Identity.generate().public
    text = key.text
    assert text.startswith(KEY_PREFIX)
    assert len(text) == len(KEY_PREFIX) + 56
    assert text == text.lower()
    assert PeerKey.parse(text) == key
    assert PeerKey.parse(text).raw == key.raw


@given(st.binary(min_size=32, max_size=32))
def test_round_trip_of_any_32_bytes(raw: bytes) -> None:
    assert PeerKey.parse(PeerKey(raw).text).raw == raw


def test_parse_ignores_case() -> None:
    key = Identity.generate().public
    assert PeerKey.parse(key.text.upper()) == key
    assert PeerKey.parse(KEY_PREFIX + key.text[len(KEY_PREFIX) :].upper()) == key


def test_equal_keys_are_one_key() -> None:
    key = PeerKey(RFC8032_PUBLIC)
    assert key == PeerKey(bytes(RFC8032_PUBLIC))
    assert hash(key) == hash(PeerKey(bytes(RFC8032_PUBLIC)))
    assert key != Identity.generate().public


def test_one_letter_typo_is_refused() -> None:
    text = PeerKey(RFC8032_PUBLIC).text
    body = text[len(KEY_PREFIX) :]
    refused = 0
    for position in range(len(body)):
        letter = "a" if body[position] != "a" else "b"
        typo = KEY_PREFIX + body[:position] + letter + body[position + 1 :]
        with pytest.raises(BadKey):
            PeerKey.parse(typo)
        refused += 1
    assert refused == 56


def test_typo_message_says_checksum() -> None:
    text = PeerKey(RFC8032_PUBLIC).text
    typo = text[:10] + ("a" if text[10] != "a" else "b") + text[11:]
    with pytest.raises(BadKey, match="checksum is wrong"):
        PeerKey.parse(typo)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("xx-" + "a" * 56, "must start with 'tn-'"),
        ("a" * 59, "must start with 'tn-'"),
        ("tn-" + "a" * 55, "58 characters, not 59"),
        ("tn-" + "a" * 57, "60 characters, not 59"),
        ("tn-", "3 characters, not 59"),
        ("tn-" + "1" * 56, "not base32"),
        ("", "must start with 'tn-'"),
    ],
)
def test_malformed_keys(text: str, complaint: str) -> None:
    with pytest.raises(BadKey, match=complaint):
        PeerKey.parse(text)


def test_bad_key_is_a_trust_error_and_a_value_error() -> None:
    with pytest.raises(TrustError):
        PeerKey.parse("nope")
    with pytest.raises(ValueError):
        PeerKey.parse("nope")


def test_not_text() -> None:
    with pytest.raises(BadKey, match="not bytes"):
        PeerKey.parse(b"tn-abc")  # type: ignore[arg-type]


def test_long_input_is_cut_in_the_message() -> None:
    with pytest.raises(BadKey) as caught:
        PeerKey.parse("tn-" + "a" * 10_000)
    assert len(str(caught.value)) < 200


def test_raw_must_be_32_bytes() -> None:
    with pytest.raises(BadKey):
        PeerKey(b"\x00" * 31)
    with pytest.raises(BadKey):
        PeerKey(bytearray(32))  # type: ignore[arg-type]


def test_the_printed_form_is_base32_of_key_and_checksum() -> None:
    text = PeerKey(RFC8032_PUBLIC).text
    decoded = base64.b32decode(text[len(KEY_PREFIX) :].upper())
    assert decoded[:32] == RFC8032_PUBLIC
    assert len(decoded) == 35


def test_short_str_and_repr() -> None:
    key = PeerKey(RFC8032_PUBLIC)
    assert str(key) == key.text
    assert repr(key) == f"PeerKey({key.text!r})"
    assert key.text.startswith(key.short)
    assert len(key.short) == 15
    identity = Identity(Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET))
    assert repr(identity) == f"Identity({key.text!r})"
    assert RFC8032_SECRET.hex() not in repr(identity)


def test_identity_matches_rfc8032() -> None:
    identity = Identity(Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET))
    assert identity.public.raw == RFC8032_PUBLIC
    assert identity.sign(b"") == RFC8032_SIGNATURE
    assert identity.public.verify(RFC8032_SIGNATURE, b"")


def test_verify() -> None:
    identity = Identity.generate()
    signature = identity.sign(b"offer")
    assert len(signature) == 64
    assert identity.public.verify(signature, b"offer")
    assert not identity.public.verify(signature, b"offer!")
    assert not Identity.generate().public.verify(signature, b"offer")
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not identity.public.verify(flipped, b"offer")
    assert not identity.public.verify(signature[:63], b"offer")
    assert not identity.public.verify(b"", b"offer")
    assert not identity.public.verify("x" * 64, b"offer")  # type: ignore[arg-type]


def test_verify_with_a_key_nobody_holds() -> None:
    # Any 32 bytes make a PeerKey; one that is no real public key verifies nothing.
    key = PeerKey(b"\xff" * 32)
    assert not key.verify(b"\x00" * 64, b"data")


def test_identity_exposes_its_private_key() -> None:
    private = Ed25519PrivateKey.generate()
    identity = Identity(private)
    assert identity.private_key is private
    assert identity.public == Identity(private).public
