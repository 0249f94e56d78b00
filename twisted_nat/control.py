"""
What peers say to each other on the shared socket, and how it is protected.

Control messages (the punch handshake and keep-alive) are STUN messages of
two methods of our own, so the demultiplexer routes them by method and the
STUN codec and its tests serve them:

    PUNCH          method PUNCH, class request     "can you hear me?"
    PUNCH_ACK      method PUNCH, class success     "yes" (same transaction id)
    PUNCH_CONFIRM  method PUNCH, class indication  "and I heard you: use this path"
    KEEP_ALIVE     method KEEPALIVE, class request
    KEEP_ALIVE_ACK method KEEPALIVE, class success

Each carries USERNAME = the session id (hex), MESSAGE-INTEGRITY-SHA256
under the sender's control key, and FINGERPRINT.  A PUNCH names the
candidate address it was sent to (so the receiver learns which of its
candidates was reached), an ACK the address the PUNCH came from.  Control
messages are authenticated, not encrypted: the session id, the addresses
and the transaction ids are in clear.

Application datagrams carry a frame of their own, whose first byte (4) no
STUN, ChannelData, DTLS, RTP or QUIC packet can start with (RFC 7983, RFC
9443):

    0x04 | sequence number (8 bytes, big endian) | ciphertext | tag (16 bytes)

The payload is encrypted and authenticated with ChaCha20-Poly1305 (RFC
8439) under the sender's data key, with the 9-byte header as associated
data and the sequence number, after 4 zero bytes, as the nonce.

What this protects, against anyone who does not hold the session secret
and can see, spoof, drop or replay datagrams: the payload's
confidentiality and integrity, and the authenticity of every frame and
control message (each direction has keys of its own, derived with
HKDF-SHA256 from the secret, so nothing can be reflected back to its
sender as if the peer had sent it); the receiver's sliding window of
sequence numbers refuses replays.  What it does not hide: the size of
every datagram, when it is sent, its sequence number, both peers'
addresses and ports, the session id, and that two peers talk.  Nor does
it stop datagrams being dropped, delayed or reordered within the window.
"""

from __future__ import annotations

import hmac
import struct
import zlib

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from twisted_nat.address import Address
from twisted_nat.errors import STUNDecodeError
from twisted_nat.stun.attributes import (
    MAGIC_COOKIE_BYTES,
    STUN_ATTRIBUTES,
    Attribute,
    Fingerprint,
    MessageIntegritySHA256,
    Username,
    XorAddressAttribute,
    XorMappedAddress,
)
from twisted_nat.stun.message import (
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    Message,
    MessageClass,
    check_integrity,
    decode,
    encode,
    message_type,
    new_transaction_id,
)

PUNCH = 0x0D0
KEEPALIVE = 0x0D1
APP_DATA = 0x04

_HEADER = struct.Struct("!BQ")
_NONCE = struct.Struct("!4xQ")
_SEQUENCE = struct.Struct("!Q")
TAG_LENGTH = 16
FRAME_OVERHEAD = _HEADER.size + TAG_LENGTH
MAX_SEQUENCE = 2**64 - 1
"""The last sequence number a data key may send under: each number is a nonce, used once."""


@attrs.frozen
class Destination(XorAddressAttribute):
    """
    The candidate address a PUNCH was sent to (comprehension-optional,
    private range): tells the receiver which of its candidates was reached.
    """

    TYPE = 0xC0D0


CONTROL_ATTRIBUTES = STUN_ATTRIBUTES.extended(Destination)
"""STUN's attribute table with L{Destination}: what control messages are decoded with."""


_OFFERER_TO_ANSWERER = b"offerer->answerer"
_ANSWERER_TO_OFFERER = b"answerer->offerer"


@attrs.frozen
class SessionKeys:
    """
    One side's keys of a session, derived from its 32-byte secret: a key
    per direction for control messages and another per direction for
    application data, so that nothing can be reflected back to its sender
    as if the peer had sent it, and no key serves two purposes.

    @ivar control_send: MACs the control messages we send.
    @ivar control_receive: verifies the control messages the peer sends.
    @ivar send: encrypts the application data we send.
    @ivar receive: decrypts the application data the peer sends.
    """

    session_id: bytes
    control_send: bytes
    control_receive: bytes
    send: bytes
    receive: bytes

    @classmethod
    def derive(cls, session_id: bytes, secret: bytes, offerer: bool) -> SessionKeys:
        """
        Each key with HKDF-SHA256 (RFC 5869): the secret as input keying
        material, the session id as salt, and a label naming the key's use
        and direction as info.  The offerer's sending keys are the
        answerer's receiving keys.
        """

        def key(use: bytes, direction: bytes) -> bytes:
            info = b"twisted-nat v1 " + use + b" " + direction
            return HKDF(algorithm=SHA256(), length=32, salt=session_id, info=info).derive(secret)

        ours, theirs = (_OFFERER_TO_ANSWERER, _ANSWERER_TO_OFFERER)[:: 1 if offerer else -1]
        return cls(
            session_id,
            key(b"control", ours),
            key(b"control", theirs),
            key(b"data", ours),
            key(b"data", theirs),
        )

    def send_cipher(self) -> ChaCha20Poly1305:
        """
        The AEAD that encrypts our data under L{send}: a new object at each
        call, for the connection to keep while it sends.
        """
        return ChaCha20Poly1305(self.send)

    def receive_cipher(self) -> ChaCha20Poly1305:
        """The AEAD that decrypts the peer's data under L{receive}, as L{send_cipher}."""
        return ChaCha20Poly1305(self.receive)

    @property
    def username(self) -> str:
        return self.session_id.hex()


def control_message(
    keys: SessionKeys,
    method: int,
    message_class: MessageClass,
    transaction_id: bytes | None = None,
    extra: tuple[Attribute, ...] = (),
) -> bytes:
    """One control message, MACed under our sending control key."""
    message = Message(
        method,
        message_class,
        transaction_id or new_transaction_id(),
        (Username(keys.username), *extra, MessageIntegritySHA256(), Fingerprint()),
    )
    return encode(message, key=keys.control_send)


def punch(keys: SessionKeys, destination: Address) -> tuple[bytes, bytes]:
    """A PUNCH towards C{destination}: (transaction id, bytes)."""
    tid = new_transaction_id()
    return tid, control_message(
        keys, PUNCH, MessageClass.REQUEST, tid, (Destination(*destination),)
    )


def punch_ack(keys: SessionKeys, transaction_id: bytes, source: Address) -> bytes:
    return control_message(
        keys, PUNCH, MessageClass.SUCCESS, transaction_id, (XorMappedAddress(*source),)
    )


def punch_confirm(keys: SessionKeys) -> bytes:
    return control_message(keys, PUNCH, MessageClass.INDICATION)


def keepalive(keys: SessionKeys) -> tuple[bytes, bytes]:
    tid = new_transaction_id()
    return tid, _keepalive_message(keys, _KEEPALIVE_REQUEST, tid)


def keepalive_ack(keys: SessionKeys, transaction_id: bytes) -> bytes:
    return _keepalive_message(keys, _KEEPALIVE_SUCCESS, transaction_id)


# --- keep-alive, without the general codec ------------------------------------------
#
# Keep-alive is the only control traffic of a connection that is up, and a
# node with many peers sends and answers it for as long as it runs.  It always
# has the one layout below, so it is built and recognised here at fixed
# offsets, cheaper than going through Message, encode() and decode().  The
# bytes are exactly what control_message() produces, and a datagram that is
# not in this layout (anything another implementation might send) still goes
# through decode(), so what is accepted and what is dropped does not change.
#
#    0  header: type, length 80, magic cookie, transaction id
#   20  USERNAME, 32 bytes: the session id in lower-case hex
#   56  MESSAGE-INTEGRITY-SHA256, 32 bytes: over 0-56, length field set to 72
#   92  FINGERPRINT: CRC-32 of 0-92, xor 0x5354554E

_KEEPALIVE_REQUEST = message_type(KEEPALIVE, MessageClass.REQUEST)
_KEEPALIVE_SUCCESS = message_type(KEEPALIVE, MessageClass.SUCCESS)
_KEEPALIVE_CLASSES = {
    _KEEPALIVE_REQUEST: MessageClass.REQUEST,
    _KEEPALIVE_SUCCESS: MessageClass.SUCCESS,
}
_KEEPALIVE_SIZE = 100
_KEEPALIVE_SIGNED = 56  # the bytes MESSAGE-INTEGRITY-SHA256 covers
_KEEPALIVE_FINGERPRINTED = 92  # the bytes FINGERPRINT covers
_KEEPALIVE_TYPE = struct.Struct("!H")
# After the type: the length field as MESSAGE-INTEGRITY-SHA256 covers the
# message (ending with it), the cookie, the transaction id and USERNAME.
_KEEPALIVE_SIGNED_REST = struct.Struct("!H4s12sHH32s")
_KEEPALIVE_FIELDS = struct.Struct("!HH4s12sHH")
_INTEGRITY_HEAD = struct.pack("!HH", MessageIntegritySHA256.TYPE, 32)
_FINGERPRINT_HEAD = struct.pack("!HH", Fingerprint.TYPE, 4)
_LENGTH_TO_INTEGRITY = struct.pack("!H", _KEEPALIVE_FINGERPRINTED - HEADER_LENGTH)
_LENGTH_TO_FINGERPRINT = struct.pack("!H", _KEEPALIVE_SIZE - HEADER_LENGTH)
_CRC = struct.Struct("!I")
_HEX_DIGITS = b"0123456789abcdef"


def _keepalive_message(keys: SessionKeys, mtype: int, transaction_id: bytes) -> bytes:
    kind = _KEEPALIVE_TYPE.pack(mtype)
    rest = _KEEPALIVE_SIGNED_REST.pack(
        _KEEPALIVE_FINGERPRINTED - HEADER_LENGTH,
        MAGIC_COOKIE_BYTES,
        transaction_id,
        Username.TYPE,
        32,
        keys.username.encode("ascii"),
    )
    mac = hmac.digest(keys.control_send, kind + rest, "sha256")
    message = kind + _LENGTH_TO_FINGERPRINT + rest[2:] + _INTEGRITY_HEAD + mac
    crc = zlib.crc32(message) ^ FINGERPRINT_XOR
    return message + _FINGERPRINT_HEAD + _CRC.pack(crc)


def keepalive_fields(datagram: bytes) -> tuple[bytes, MessageClass, bytes] | None:
    """
    (session id, class, transaction id) of a KEEP_ALIVE request or ACK in
    the layout L{keepalive} and L{keepalive_ack} produce, fingerprint
    checked; None for anything else, which L{session_of} then judges.  As
    with L{session_of}, the claim is unverified until L{verify_keepalive}.
    """
    if type(datagram) is not bytes or len(datagram) != _KEEPALIVE_SIZE:
        return None
    mtype, length, cookie, tid, utype, ulen = _KEEPALIVE_FIELDS.unpack_from(datagram)
    message_class = _KEEPALIVE_CLASSES.get(mtype)
    if (
        message_class is None
        or length != _KEEPALIVE_SIZE - HEADER_LENGTH
        or cookie != MAGIC_COOKIE_BYTES
        or utype != Username.TYPE
        or ulen != 32
        or datagram[_KEEPALIVE_SIGNED : _KEEPALIVE_SIGNED + 4] != _INTEGRITY_HEAD
        or datagram[_KEEPALIVE_FINGERPRINTED : _KEEPALIVE_FINGERPRINTED + 4] != _FINGERPRINT_HEAD
    ):
        return None
    username = datagram[24:_KEEPALIVE_SIGNED]
    if username.translate(None, _HEX_DIGITS):
        return None  # upper case, or not hex at all: decode() decides
    crc = _CRC.unpack_from(datagram, _KEEPALIVE_FINGERPRINTED + 4)[0]
    if crc != zlib.crc32(datagram[:_KEEPALIVE_FINGERPRINTED]) ^ FINGERPRINT_XOR:
        return None
    return bytes.fromhex(username.decode("ascii")), message_class, tid


def verify_keepalive(datagram: bytes, keys: SessionKeys) -> bool:
    """L{verify} for a datagram L{keepalive_fields} accepted, in constant time."""
    covered = datagram[:2] + _LENGTH_TO_INTEGRITY + datagram[4:_KEEPALIVE_SIGNED]
    mac = hmac.digest(keys.control_receive, covered, "sha256")
    return hmac.compare_digest(mac, datagram[_KEEPALIVE_SIGNED + 4 : _KEEPALIVE_FINGERPRINTED])


def session_of(datagram: bytes) -> tuple[Message, bytes] | None:
    """
    Decode a control message and return it with the session id it claims,
    or None for anything malformed.  Whether the claim is true is for
    L{verify} to say, with that session's keys.
    """
    try:
        message = decode(datagram, table=CONTROL_ATTRIBUTES)
    except STUNDecodeError:
        return None
    username = message.get(Username)
    if username is None or len(username.value) != 32:
        return None
    try:
        return message, bytes.fromhex(username.value)
    except ValueError:
        return None


def verify(message: Message, keys: SessionKeys) -> bool:
    """
    Constant-time check of the message's MESSAGE-INTEGRITY-SHA256 under
    the peer's control key: our own messages, reflected back, fail it.
    """
    return message.integrity_offsets[1] >= 0 and check_integrity(message, keys.control_receive)


# --- application data ----------------------------------------------------------


def encrypt_frame(cipher: ChaCha20Poly1305, sequence: int, payload: bytes) -> bytes:
    """
    One application datagram, encrypted and authenticated under C{cipher}
    (L{SessionKeys.send_cipher}).  C{sequence} is the nonce: the caller
    must never use a number twice under one key.

    @raise ValueError: C{sequence} is not in 0 to L{MAX_SEQUENCE}.
    """
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"sequence number {sequence} out of range")
    header = _HEADER.pack(APP_DATA, sequence)
    return header + cipher.encrypt(_NONCE.pack(sequence), payload, header)


def decrypt_frame(cipher: ChaCha20Poly1305, frame: bytes) -> tuple[int, bytes] | None:
    """
    (sequence, payload) of a frame that decrypts and authenticates under
    C{cipher} (L{SessionKeys.receive_cipher}); None for anything else,
    never an exception.  Whether the sequence number is new is for the
    caller's L{ReplayWindow} to say, after this.
    """
    if len(frame) < FRAME_OVERHEAD or frame[0] != APP_DATA:
        return None
    sequence = _SEQUENCE.unpack_from(frame, 1)[0]
    try:
        payload = cipher.decrypt(
            _NONCE.pack(sequence), frame[_HEADER.size :], frame[: _HEADER.size]
        )
    except InvalidTag:
        return None
    return sequence, payload


class ReplayWindow:
    """
    The last 64 sequence numbers seen, as a bitmask (RFC 4303 section
    3.4.3's sliding window, as DTLS uses it): a datagram older than the
    window, or seen before, is refused.  A jump of a window or more clears
    the mask rather than shifting it, so any sequence number costs the
    same time and memory.
    """

    __slots__ = ("_highest", "_seen")
    SIZE = 64
    _MASK = (1 << SIZE) - 1

    def __init__(self) -> None:
        self._highest = 0
        self._seen = 0

    def accept(self, sequence: int) -> bool:
        """Record C{sequence}; False if it is a replay or too old."""
        if sequence <= 0:
            return False
        if sequence > self._highest:
            shift = sequence - self._highest
            if shift >= self.SIZE:
                self._seen = 1
            else:
                self._seen = ((self._seen << shift) | 1) & self._MASK
            self._highest = sequence
            return True
        age = self._highest - sequence
        if age >= self.SIZE or self._seen & (1 << age):
            return False
        self._seen |= 1 << age
        return True
