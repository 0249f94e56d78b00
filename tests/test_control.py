"""
The fixed-offset keep-alive path must agree with the full STUN codec: the
same bytes out, and the same verdict on every datagram in.
"""

from __future__ import annotations

import zlib

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
    checking = SessionKeys.derive(session, other_secret, True) if wrong_key else keys
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
    assert control.verify(message, keys)
