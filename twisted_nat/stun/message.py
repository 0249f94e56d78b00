"""
The STUN message codec (RFC 8489): values in, bytes out, and back.

No I/O and no clock: L{encode} and L{decode} are plain functions so that the
client, the server, the hole puncher and the tests all share one tested
implementation.  L{decode} raises L{STUNDecodeError} and nothing else, for
any input; hostile datagrams are therefore dropped with one C{except}.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from typing import TypeVar

import attrs

from twisted_nat.errors import IntegrityError, STUNDecodeError
from twisted_nat.stun.attributes import (
    ATTRIBUTE_TYPES,
    MAGIC_COOKIE_BYTES,
    Attribute,
    ErrorCode,
    Fingerprint,
    MessageIntegrity,
    MessageIntegritySHA256,
    UnknownAttribute,
    _new,
    _slot_setter,
    is_comprehension_required,
)

HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E

_MI_TYPE = MessageIntegrity.TYPE
_MI256_TYPE = MessageIntegritySHA256.TYPE
_FP_TYPE = Fingerprint.TYPE

_HEADER = struct.Struct("!HH4s12s")
_HEADER_HEAD = struct.Struct("!HH")
_ATTR_HEAD = struct.Struct("!HH")
_FP_ATTR = struct.Struct("!HHI")
_H = struct.Struct("!H")
_set_length = _H.pack_into
_I = struct.Struct("!I")


# --- HMAC ------------------------------------------------------------------------

_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_HMAC_BLOCK = 64  # SHA-1 and SHA-256 both hash 64-byte blocks
_HMAC_STATES_MAX = 64

_HashFactory = Callable[[bytes], "hashlib._Hash"]
_HMACStates = dict[bytes, tuple["hashlib._Hash", "hashlib._Hash"]]
_sha1 = hashlib.sha1
_sha256 = hashlib.sha256
_SHA1_STATES: _HMACStates = {}
_SHA256_STATES: _HMACStates = {}


def _hmac(key: bytes, data: bytes | bytearray, digest: _HashFactory, states: _HMACStates) -> bytes:
    """
    HMAC (RFC 2104) of C{data} under C{key}, with C{digest} (SHA-1 or
    SHA-256) and C{states}, the cache of keyed states for that digest.

    This is the construction the C{hmac} module falls back to, written out
    because every message sent or checked pays for it, and OpenSSL 3's
    one-shot HMAC (C{hmac.digest}) costs about twice as much: it looks up a
    MAC implementation on every call.  The hash states after the padded key
    blocks are kept per key, up to L{_HMAC_STATES_MAX} keys and then flushed
    (an agent uses a handful at a time; the states give away nothing the
    key does not, though they keep it alive until flushed), so a message
    costs two hash copies and two short updates.  The tests check the result
    against C{hmac.digest}; comparisons still go through
    C{hmac.compare_digest}.
    """
    if type(key) is not bytes:
        key = bytes(key)
    keyed = states.get(key)
    if keyed is None:
        block = digest(key).digest() if len(key) > _HMAC_BLOCK else key
        block = block.ljust(_HMAC_BLOCK, b"\x00")
        keyed = (digest(block.translate(_IPAD)), digest(block.translate(_OPAD)))
        if len(states) >= _HMAC_STATES_MAX:
            states.clear()
        states[key] = keyed
    inner = keyed[0].copy()
    inner.update(data)
    outer = keyed[1].copy()
    outer.update(inner.digest())
    return outer.digest()


class MessageClass(enum.IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Method(enum.IntEnum):
    """Methods of RFC 8489 and RFC 8656 (TURN); others decode as plain ints."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


_METHODS: dict[int, int] = {m.value: m for m in Method}
_CLASSES = (MessageClass.REQUEST, MessageClass.INDICATION, MessageClass.SUCCESS, MessageClass.ERROR)


def message_type(method: int, message_class: int) -> int:
    """Interleave method and class bits into the 14-bit message type."""
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 0b01) << 4)
        | ((message_class & 0b10) << 7)
    )


def split_message_type(value: int) -> tuple[int, MessageClass]:
    method = (value & 0x000F) | ((value >> 1) & 0x0070) | ((value >> 2) & 0x0F80)
    return method, _CLASSES[((value >> 4) & 0b01) | ((value >> 7) & 0b10)]


def new_transaction_id() -> bytes:
    """96 cryptographically random bits, as RFC 8489 6 requires."""
    return os.urandom(12)


def _check_transaction_id(instance: object, attribute: object, value: bytes) -> None:
    if len(value) != 12:
        raise ValueError("a transaction id is 12 bytes")


def _attribute_tuple(attributes: Iterable[Attribute]) -> tuple[Attribute, ...]:
    """
    Message's converter: a named, typed function because mypy's attrs plugin
    cannot type the generic C{tuple} as a converter.
    """
    return attributes if type(attributes) is tuple else tuple(attributes)


_T = TypeVar("_T", bound=Attribute)


@attrs.frozen
class Message:
    """
    One STUN message.

    C{cookie} is the magic cookie for every RFC 5389/8489 message; a message
    from an RFC 3489 agent has none, and what stands in its place is the
    first four bytes of that agent's 128-bit transaction id.

    A decoded message remembers its bytes (C{raw}) and where its integrity
    attributes start, so L{verify_integrity} checks the HMAC over exactly
    what arrived; neither takes part in equality.
    """

    method: int
    message_class: MessageClass
    transaction_id: bytes = attrs.field(validator=_check_transaction_id)
    attributes: tuple[Attribute, ...] = attrs.field(default=(), converter=_attribute_tuple)
    cookie: bytes = MAGIC_COOKIE_BYTES
    raw: bytes = attrs.field(default=b"", eq=False, repr=False)
    integrity_offsets: tuple[int, int] = attrs.field(default=(-1, -1), eq=False, repr=False)

    @property
    def is_rfc3489(self) -> bool:
        """True for a message without the magic cookie (an RFC 3489 agent)."""
        return self.cookie != MAGIC_COOKIE_BYTES

    def get(self, kind: type[_T]) -> _T | None:
        """The first attribute of class C{kind}, or None."""
        for attribute in self.attributes:
            if type(attribute) is kind:
                return attribute
        return None

    def unknown_comprehension_required(self) -> tuple[int, ...]:
        """Types of attributes we did not understand but were required to."""
        return tuple(
            a.attr_type
            for a in self.attributes
            if type(a) is UnknownAttribute and is_comprehension_required(a.attr_type)
        )

    def error(self) -> ErrorCode | None:
        return self.get(ErrorCode)


def request(
    method: int = Method.BINDING,
    attributes: Iterable[Attribute] = (),
    transaction_id: bytes | None = None,
) -> Message:
    """A request with a fresh transaction id unless one is given."""
    return Message(
        method, MessageClass.REQUEST, transaction_id or new_transaction_id(), tuple(attributes)
    )


def response_to(
    req: Message,
    attributes: Iterable[Attribute] = (),
    message_class: MessageClass = MessageClass.SUCCESS,
) -> Message:
    """A response that echoes C{req}'s method, transaction id and cookie."""
    return Message(req.method, message_class, req.transaction_id, tuple(attributes), req.cookie)


def with_integrity(
    message: Message, sha1: bool = True, sha256: bool = False, fingerprint: bool = True
) -> Message:
    """
    C{message} with empty MESSAGE-INTEGRITY attributes (and FINGERPRINT) at
    the end, in the order RFC 8489 requires; L{encode} computes their values
    from its key.
    """
    kept = tuple(
        a for a in message.attributes if a.attr_type not in (_MI_TYPE, _MI256_TYPE, _FP_TYPE)
    )
    tail: list[Attribute] = []
    if sha1:
        tail.append(MessageIntegrity())
    if sha256:
        tail.append(MessageIntegritySHA256())
    if fingerprint:
        tail.append(Fingerprint())
    return attrs.evolve(message, attributes=kept + tuple(tail))


def has_integrity(message: Message) -> bool:
    return any(a.attr_type in (_MI_TYPE, _MI256_TYPE) for a in message.attributes)


# --- encoding -------------------------------------------------------------------

_PADDING: dict[bytes, tuple[bytes, ...]] = {}
_CLASS_BITS = (0x000, 0x010, 0x100, 0x110)


def _padding(pad: bytes) -> tuple[bytes, ...]:
    """
    The padding after a value of each length modulo 4, built once per pad
    byte, so that the encoder pads with one index.
    """
    pad = bytes(pad)
    if len(pad) != 1:
        # Anything else would misalign every attribute after the first.
        raise ValueError("the padding must be a single byte")
    table = _PADDING[pad] = (b"", pad * 3, pad * 2, pad)  # at most 256 entries
    return table


# Types the encoder does not simply write out: computed ones, and -1, the
# TYPE of classes (UnknownAttribute) whose instances say their own type.
_SPECIAL_ENCODE = frozenset((-1, _MI_TYPE, _MI256_TYPE, _FP_TYPE))
_COMPUTED_TYPES = frozenset((_MI_TYPE, _MI256_TYPE, _FP_TYPE))


def encode(message: Message, key: bytes | None = None, pad: bytes = b"\x00") -> bytes:
    """
    Serialise C{message}.

    MESSAGE-INTEGRITY and MESSAGE-INTEGRITY-SHA256 attributes with an empty
    C{hmac} are computed here from C{key}; FINGERPRINT is always computed.
    With a C{key}, integrity values are recomputed even when given, so a
    decoded message re-signs identically.  C{pad} is the byte used to pad
    values to 32 bits (RFC 8489 allows any; RFC 5769's vectors use spaces).

    @raise ValueError: an attribute cannot be encoded, integrity is asked for
        without a key, or integrity/fingerprint attributes are out of order.
    """
    tid = message.transaction_id
    method = message.method
    message_class = message.message_class
    cookie = message.cookie
    # The header fields are checked here, not by Message: a wrong value
    # would otherwise be truncated or padded into a different message.
    if not 0 <= method <= 0xFFF:
        raise ValueError(f"method {method:#x} does not fit in 12 bits")
    if not 0 <= message_class <= 3:
        raise ValueError(f"message class {message_class} is not one of the four")
    if len(cookie) != 4:
        raise ValueError("the magic cookie field is 4 bytes")
    mtype = (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | _CLASS_BITS[message_class]
    )
    try:
        padding = _PADDING[pad]
    except (KeyError, TypeError):
        padding = _padding(pad)
    attr_head = _ATTR_HEAD.pack
    # The message is built in one buffer, header first: MESSAGE-INTEGRITY and
    # FINGERPRINT cover the header with its length field set to end at
    # themselves, which is patched in place rather than packed anew.
    out = bytearray(_HEADER.pack(mtype, 0, cookie, tid))
    stage = 0  # 0: plain attributes, 1: after MI, 2: after MI-SHA256, 3: after FINGERPRINT
    try:
        for attribute in message.attributes:
            atype = attribute.TYPE
            if atype in _SPECIAL_ENCODE:
                if stage == 3:
                    raise ValueError("FINGERPRINT must be the last attribute")
                if atype < 0:
                    atype = attribute.attr_type
                    if atype in _COMPUTED_TYPES:
                        raise ValueError(f"attribute type {atype:#06x} is computed, not given raw")
                elif atype == _FP_TYPE:
                    _set_length(out, 2, len(out) - HEADER_LENGTH + 8)
                    out += _FP_ATTR.pack(_FP_TYPE, 4, zlib.crc32(out) ^ FINGERPRINT_XOR)
                    stage = 3
                    continue
                else:
                    if atype == _MI_TYPE:
                        if type(attribute) is not MessageIntegrity:
                            raise ValueError(f"{attribute!r} does not carry an HMAC")
                        if stage:
                            raise ValueError(
                                "MESSAGE-INTEGRITY repeated or after MESSAGE-INTEGRITY-SHA256"
                            )
                        size, digest, states, stage = 20, _sha1, _SHA1_STATES, 1
                    else:
                        if type(attribute) is not MessageIntegritySHA256:
                            raise ValueError(f"{attribute!r} does not carry an HMAC")
                        if stage == 2:
                            raise ValueError("MESSAGE-INTEGRITY-SHA256 appears twice")
                        size, digest, states, stage = attribute.length, _sha256, _SHA256_STATES, 2
                    if key is not None:
                        _set_length(out, 2, len(out) - HEADER_LENGTH + 4 + size)
                        value = _hmac(key, out, digest, states)[:size]
                    elif len(attribute.hmac) == size:
                        value = attribute.hmac
                    else:
                        raise ValueError("message integrity requested without a key")
                    out += attr_head(atype, size)
                    out += value
                    continue
            if stage:
                if stage == 3:
                    raise ValueError("FINGERPRINT must be the last attribute")
                raise ValueError("only integrity and FINGERPRINT may follow MESSAGE-INTEGRITY")
            value = attribute.encode_value(tid)
            length = len(value)
            out += attr_head(atype, length)  # struct.error beyond 0xFFFF
            out += value
            if length & 3:
                out += padding[length & 3]
        _set_length(out, 2, len(out) - HEADER_LENGTH)
    except (struct.error, OSError) as e:
        # Integers out of range for their field, over-long values or messages
        # (the length fields are 16 bits), and hosts inet_pton cannot parse.
        raise ValueError(f"cannot encode {message!r}: {e}") from e
    return bytes(out)


# --- decoding -------------------------------------------------------------------


def looks_like_stun(data: bytes) -> bool:
    """
    The cheap test of RFC 7983 / RFC 8489 section 7: first two bits zero,
    length a multiple of four that matches the datagram, and the magic
    cookie.  Used by the demultiplexer before any full decode.
    """
    return (
        len(data) >= HEADER_LENGTH
        and data[0] < 4
        and data[4:8] == MAGIC_COOKIE_BYTES
        and (len(data) - HEADER_LENGTH) & 3 == 0
        and _HEADER_HEAD.unpack_from(data)[1] == len(data) - HEADER_LENGTH
    )


_DECODE_ERRORS = (
    ValueError,
    struct.error,
    UnicodeDecodeError,
    OSError,
    IndexError,
    TypeError,
    OverflowError,
)


def decode(data: bytes, allow_rfc3489: bool = False) -> Message:
    """
    Parse one STUN message that fills C{data} exactly.

    Attributes after MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256
    and FINGERPRINT are ignored (RFC 8489 14.5); nothing may follow
    FINGERPRINT, whose CRC is checked.  Without C{allow_rfc3489} a message
    lacking the magic cookie is refused.

    @raise STUNDecodeError: for any input that is not such a message.
    """
    try:
        if type(data) is not bytes:
            data = bytes(data)
        size = len(data)
        if size < HEADER_LENGTH:
            raise STUNDecodeError("shorter than a STUN header")
        mtype, length, cookie, tid = _HEADER.unpack_from(data)
        if mtype & 0xC000:
            raise STUNDecodeError("first two bits are not zero")
        if length & 3 or length + HEADER_LENGTH != size:
            raise STUNDecodeError(f"length field {length} does not match datagram of {size} bytes")
        if cookie != MAGIC_COOKIE_BYTES and not allow_rfc3489:
            raise STUNDecodeError("no magic cookie")
        attributes: list[Attribute] = []
        append = attributes.append
        unpack_head = _ATTR_HEAD.unpack_from
        decoders = ATTRIBUTE_TYPES
        mi_offset = mi256_offset = -1
        signed = False
        offset = HEADER_LENGTH
        # The length checks above make size and every offset multiples of
        # four, so a whole attribute header always fits before the end.
        while offset < size:
            atype, alen = unpack_head(data, offset)
            start = offset + 4
            end = start + alen
            if end > size:
                raise STUNDecodeError(f"attribute {atype:#06x} overruns the message")
            if atype in _COMPUTED_TYPES:
                if atype == _FP_TYPE:
                    if end != size:
                        raise STUNDecodeError("FINGERPRINT is not the last attribute")
                    if alen != 4:
                        raise STUNDecodeError("FINGERPRINT must be 4 bytes")
                    crc = _I.unpack_from(data, start)[0]
                    if crc != zlib.crc32(data[:offset]) ^ FINGERPRINT_XOR:
                        raise STUNDecodeError("FINGERPRINT does not match")
                    fingerprint: Fingerprint = _new(Fingerprint)
                    _set_crc(fingerprint, crc)
                    append(fingerprint)
                    break
                if atype == _MI_TYPE:
                    if mi_offset >= 0 or mi256_offset >= 0:
                        raise STUNDecodeError(
                            "MESSAGE-INTEGRITY repeated or after MESSAGE-INTEGRITY-SHA256"
                        )
                    if alen != 20:
                        raise STUNDecodeError("MESSAGE-INTEGRITY must be 20 bytes")
                    mi_offset = offset
                    signed = True
                    integrity: MessageIntegrity = _new(MessageIntegrity)
                    _set_hmac(integrity, data[start:end])
                    append(integrity)
                else:
                    if mi256_offset >= 0:
                        raise STUNDecodeError("MESSAGE-INTEGRITY-SHA256 repeated")
                    mi256_offset = offset
                    signed = True
                    append(MessageIntegritySHA256.decode_value(data[start:end], tid))
            elif not signed:
                try:
                    decoder = decoders[atype]
                except KeyError:
                    append(UnknownAttribute(atype, data[start:end]))
                else:
                    append(decoder(data[start:end], tid))
            # else: not covered by the integrity attribute before it, ignored.
            offset = (end + 3) & -4
        # Message(...) without its checks, all made already: the transaction
        # id came out of a 12-byte field and the attributes are a tuple.
        split = _KNOWN_TYPES.get(mtype)
        if split is None:
            method, message_class = split_message_type(mtype)
            split = _METHODS.get(method, method), message_class
        message: Message = _new(Message)
        _set_method(message, split[0])
        _set_class(message, split[1])
        _set_tid(message, tid)
        _set_attributes(message, tuple(attributes))
        _set_cookie(message, cookie)
        _set_raw(message, data)
        _set_offsets(message, (mi_offset, mi256_offset))
        return message
    except STUNDecodeError:
        raise
    except _DECODE_ERRORS as e:
        raise STUNDecodeError(f"malformed STUN message: {e}") from e


# The message types of the known methods, already split.
_KNOWN_TYPES: dict[int, tuple[int, MessageClass]] = {
    message_type(method, message_class): (method, message_class)
    for method in Method
    for message_class in MessageClass
}

# Decoders build instances with these slot setters instead of calling the
# classes: see attributes._slot_setter.
_set_method = _slot_setter(Message, "method")
_set_class = _slot_setter(Message, "message_class")
_set_tid = _slot_setter(Message, "transaction_id")
_set_attributes = _slot_setter(Message, "attributes")
_set_cookie = _slot_setter(Message, "cookie")
_set_raw = _slot_setter(Message, "raw")
_set_offsets = _slot_setter(Message, "integrity_offsets")
_set_hmac = _slot_setter(MessageIntegrity, "hmac")
_set_crc = _slot_setter(Fingerprint, "crc")


# --- integrity ---------------------------------------------------------------------


def check_integrity(message: Message, key: bytes) -> bool:
    """
    Whether C{message}, as decoded, carries a valid integrity attribute
    under C{key}.  MESSAGE-INTEGRITY-SHA256 is preferred when both are
    present (RFC 8489 14.6); comparison is in constant time.

    The HMAC covers the message up to the attribute, with the header's
    length field rewritten to end just after it.
    """
    mi_offset, mi256_offset = message.integrity_offsets
    raw = message.raw
    if mi256_offset >= 0:
        offset, digest, states = mi256_offset, _sha256, _SHA256_STATES
        size = _ATTR_HEAD.unpack_from(raw, offset)[1]
        if not 16 <= size <= 32 or size & 3:
            return False
    elif mi_offset >= 0:
        offset, digest, states, size = mi_offset, _sha1, _SHA1_STATES, 20
    else:
        return False
    covered = bytearray(raw[:offset])
    _set_length(covered, 2, offset - HEADER_LENGTH + 4 + size)
    start = offset + 4
    return hmac.compare_digest(
        _hmac(key, covered, digest, states)[:size], raw[start : start + size]
    )


def verify_integrity(message: Message, key: bytes) -> None:
    """
    @raise IntegrityError: C{message} has no integrity attribute, or it does
        not verify under C{key}.
    """
    if not check_integrity(message, key):
        if message.integrity_offsets == (-1, -1):
            raise IntegrityError("message carries no MESSAGE-INTEGRITY")
        raise IntegrityError("MESSAGE-INTEGRITY does not verify")


def error_response(req: Message, code: int, *extra: Attribute) -> Message:
    """An error response to C{req} with the RFC's reason phrase for C{code}."""
    return response_to(req, (ErrorCode.for_code(code), *extra), MessageClass.ERROR)
