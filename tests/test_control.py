"""
What peers say to each other: the fixed-offset keep-alive path must agree
with the full STUN codec (the same bytes out, the same verdict on every
datagram in); each direction has keys of its own; application frames are
encrypted and authenticated, and nothing else opens.
"""

from __future__ import annotations

import hmac
import os
import zlib

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_nat import control
from twisted_nat.control import KEEPALIVE, SessionKeys
from twisted_nat.stun.message import FINGERPRINT_XOR, MessageClass

ids = st.binary(min_size=16, max_size=16)
secrets = st.binary(min_size=32, max_size=32)
tids = st.binary(min_size=12, max_size=12)


@settings(max_examples=200, deadline=None)
@given(session=ids, secret=secrets, tid=tids, offerer=st.booleans())
def test_fast_keepalive_bytes_equal_the_codec(session, secret, tid, offerer):
    keys = SessionKeys.derive(session, secret, offerer)
    assert control.keepalive_ack(keys, tid) == control.control_message(
        keys, KEEPALIVE, MessageClass.SUCCESS, tid
    )
    probe_tid, probe = control.keepalive(keys)
    assert probe == control.control_message(keys, KEEPALIVE, MessageClass.REQUEST, probe_tid)


def full_verdict(datagram: bytes, keys: SessionKeys) -> tuple[bytes, MessageClass, bytes, bool]:
    claimed = control.session_of(datagram)
    assert claimed is not None
    message, session = claimed
    return session, message.message_class, message.transaction_id, control.verify(message, keys)


@settings(max_examples=200, deadline=None)
@given(
    session=ids,
    secret=secrets,
    tid=tids,
    flips=st.lists(st.tuples(st.integers(0, 95), st.integers(1, 255)), max_size=3),
    wrong_key=st.booleans(),
    refingerprint=st.booleans(),
)
def test_fast_keepalive_check_agrees_with_the_codec(
    session, secret, tid, flips, wrong_key, refingerprint
):
    keys = SessionKeys.derive(session, secret, True)
    peer = SessionKeys.derive(session, secret, False)
    original = control.keepalive_ack(keys, tid)
    datagram = bytearray(original)
    for offset, mask in flips:
        datagram[offset] ^= mask
    if refingerprint:
        # a forger can always fix the CRC: then only the MAC stands in the way
        crc = zlib.crc32(datagram[:92]) ^ FINGERPRINT_XOR
        datagram[92:] = bytes(datagram[92:96]) + crc.to_bytes(4, "big")
    data = bytes(datagram)
    other_secret = bytes(b ^ 0xFF for b in secret)
    checking = SessionKeys.derive(session, other_secret, False) if wrong_key else peer
    fields = control.keepalive_fields(data)
    if fields is None:
        return  # the full decoder judges it instead, as the protocol does
    session_id, message_class, transaction_id = fields
    fast = (session_id, message_class, transaction_id, control.verify_keepalive(data, checking))
    assert fast == full_verdict(data, checking)
    if data[:92] == original[:92]:
        assert fast[3] is not wrong_key
    else:
        assert not fast[3], "a changed byte under the MAC never verifies"


def test_control_messages_are_decoded_with_their_own_table():
    """A PUNCH's DESTINATION is typed by session_of, whatever was imported."""
    keys = SessionKeys.derive(bytes(16), bytes(32), True)
    _, datagram = control.punch(keys, ("192.0.2.7", 4000))
    claimed = control.session_of(datagram)
    assert claimed is not None
    message, session = claimed
    assert session == bytes(16)
    assert message.get(control.Destination) == control.Destination("192.0.2.7", 4000)
    assert control.verify(message, SessionKeys.derive(bytes(16), bytes(32), False))


# --- the keys ---


def hkdf_sha256(salt: bytes, secret: bytes, info: bytes) -> bytes:
    """RFC 5869 for one 32-byte block, written out: the test's independent reference."""
    prk = hmac.digest(salt, secret, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def test_keys_are_hkdf_of_the_secret_with_a_label_per_use_and_direction():
    """The labels are wire format: both peers must derive the same keys."""
    session, secret = bytes(range(16)), bytes(range(32, 64))
    offerer = SessionKeys.derive(session, secret, offerer=True)
    answerer = SessionKeys.derive(session, secret, offerer=False)

    def key(label: bytes) -> bytes:
        return hkdf_sha256(session, secret, b"twisted-nat v1 " + label)

    assert offerer == SessionKeys(
        session,
        control_send=key(b"control offerer->answerer"),
        control_receive=key(b"control answerer->offerer"),
        send=key(b"data offerer->answerer"),
        receive=key(b"data answerer->offerer"),
    )
    assert (answerer.control_send, answerer.control_receive) == (
        offerer.control_receive,
        offerer.control_send,
    )
    assert (answerer.send, answerer.receive) == (offerer.receive, offerer.send)
    assert len({offerer.control_send, offerer.control_receive, offerer.send, offerer.receive}) == 4


@pytest.mark.parametrize("offerer", [True, False])
def test_a_control_message_reflected_to_its_sender_fails_verification(offerer: bool):
    """An attacker echoing our own PUNCH, ACK or KEEP_ALIVE back at us gets nowhere."""
    session, secret = os.urandom(16), os.urandom(32)
    ours = SessionKeys.derive(session, secret, offerer)
    theirs = SessionKeys.derive(session, secret, not offerer)
    tid, probe = control.keepalive(ours)
    sent = [
        control.punch(ours, ("192.0.2.7", 4000))[1],
        control.punch_ack(ours, tid, ("192.0.2.8", 4001)),
        control.punch_confirm(ours),
        probe,
        control.keepalive_ack(ours, tid),
    ]
    for datagram in sent:
        claimed = control.session_of(datagram)
        assert claimed is not None
        message, _ = claimed
        assert control.verify(message, theirs), "the peer accepts it"
        assert not control.verify(message, ours), "its sender does not"
    for datagram in sent[3:]:
        assert control.keepalive_fields(datagram) is not None
        assert control.verify_keepalive(datagram, theirs)
        assert not control.verify_keepalive(datagram, ours)


# --- application frames ---

payloads = st.binary(max_size=1500)
sequences = st.integers(0, control.MAX_SEQUENCE)


def directions() -> tuple[SessionKeys, SessionKeys]:
    session, secret = os.urandom(16), os.urandom(32)
    return SessionKeys.derive(session, secret, True), SessionKeys.derive(session, secret, False)


SENDER, RECEIVER = directions()
SEND, RECEIVE = SENDER.send_cipher(), RECEIVER.receive_cipher()


@settings(max_examples=300, deadline=None)
@given(sequence=sequences, payload=payloads)
def test_a_frame_decrypts_to_what_was_encrypted(sequence: int, payload: bytes):
    frame = control.encrypt_frame(SEND, sequence, payload)
    assert len(frame) == len(payload) + control.FRAME_OVERHEAD
    assert control.decrypt_frame(RECEIVE, frame) == (sequence, payload)


@settings(max_examples=100, deadline=None)
@given(sequence=sequences, payload=payloads)
def test_the_frame_is_chacha20_poly1305_with_the_header_as_associated_data(
    sequence: int, payload: bytes
):
    """The layout, pinned: any implementation of RFC 8439 reads it."""
    frame = control.encrypt_frame(SEND, sequence, payload)
    header = b"\x04" + sequence.to_bytes(8, "big")
    assert frame[:9] == header
    nonce = bytes(4) + sequence.to_bytes(8, "big")
    assert ChaCha20Poly1305(RECEIVER.receive).decrypt(nonce, frame[9:], header) == payload


@settings(max_examples=500, deadline=None)
@given(datagram=st.binary(max_size=200))
def test_random_bytes_never_open_and_never_raise(datagram: bytes):
    assert control.decrypt_frame(RECEIVE, datagram) is None
    assert control.decrypt_frame(RECEIVE, b"\x04" + datagram) is None


@settings(max_examples=200, deadline=None)
@given(
    sequence=sequences,
    payload=st.binary(min_size=1, max_size=300),
    bit=st.integers(0, 7),
    where=st.sampled_from(["header", "ciphertext", "tag"]),
    position=st.integers(0, 10_000),
)
def test_a_flipped_bit_anywhere_is_refused(
    sequence: int, payload: bytes, bit: int, where: str, position: int
):
    frame = bytearray(control.encrypt_frame(SEND, sequence, payload))
    start, end = {
        "header": (1, 9),  # the type byte is checked before the tag
        "ciphertext": (9, len(frame) - 16),
        "tag": (len(frame) - 16, len(frame)),
    }[where]
    frame[start + position % (end - start)] ^= 1 << bit
    assert control.decrypt_frame(RECEIVE, bytes(frame)) is None


@pytest.mark.parametrize("cut", [1, 8, 15, 16])
def test_a_truncated_tag_is_refused(cut: int):
    frame = control.encrypt_frame(SEND, 7, b"payload")
    assert control.decrypt_frame(RECEIVE, frame[:-cut]) is None


def test_a_frame_under_any_other_key_is_refused():
    frame = control.encrypt_frame(SEND, 1, b"payload")
    assert control.decrypt_frame(SENDER.receive_cipher(), frame) is None, "reflected"
    assert control.decrypt_frame(RECEIVER.send_cipher(), frame) is None, "the other direction"
    other, _ = directions()
    assert control.decrypt_frame(other.send_cipher(), frame) is None, "another session"


def test_sequence_numbers_out_of_range_are_refused():
    control.encrypt_frame(SEND, control.MAX_SEQUENCE, b"last")
    for sequence in (-1, control.MAX_SEQUENCE + 1):
        with pytest.raises(ValueError):
            control.encrypt_frame(SEND, sequence, b"never")
