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
from collections.abc import Iterable
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
    attributes: tuple[Attribute, ...] = attrs.field(default=(), converter=tuple)
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


# --- encoding -------------------------------------------------------------------

_PADDING: dict[bytes, tuple[bytes, ...]] = {}


def _padding(pad: bytes) -> tuple[bytes, ...]:
    """
    The padding strings for a value of each length modulo 4, built once per
    pad byte: the encoder's inner loop then pads with one index.
    """
    table = _PADDING.get(pad)
    if table is None:
        if len(pad) != 1:
            raise ValueError("the padding must be a single byte")
        table = (b"", pad * 3, pad * 2, pad)
        if len(_PADDING) < 16:
            _PADDING[pad] = table
    return table


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
    if not 0 <= method <= 0xFFF:
        raise ValueError(f"method {method:#x} does not fit in 12 bits")
    message_class = message.message_class
    # message_type(), inlined: this runs for every datagram sent.
    mtype = (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 0b01) << 4)
        | ((message_class & 0b10) << 7)
    )
    cookie = message.cookie
    padding = _padding(pad)
    attr_head = _ATTR_HEAD.pack
    body = bytearray()
    stage = 0  # 0: plain attributes, 1: after MI, 2: after MI-SHA256, 3: after FINGERPRINT
    for attribute in message.attributes:
        if stage == 3:
            raise ValueError("FINGERPRINT must be the last attribute")
        # TYPE is a class constant; only classes without one (TYPE == -1,
        # UnknownAttribute) compute their type, so skip the property call.
        atype = attribute.TYPE
        if atype < 0:
            atype = attribute.attr_type
        elif atype == _MI_TYPE or atype == _MI256_TYPE:
            if atype == _MI_TYPE:
                if type(attribute) is not MessageIntegrity:
                    raise ValueError(f"{attribute!r} does not carry an HMAC")
                if stage:
                    raise ValueError("MESSAGE-INTEGRITY must precede MESSAGE-INTEGRITY-SHA256")
                size, digest, stage = 20, "sha1", 1
                given = attribute.hmac
            else:
                if type(attribute) is not MessageIntegritySHA256:
                    raise ValueError(f"{attribute!r} does not carry an HMAC")
                if stage == 2:
                    raise ValueError("MESSAGE-INTEGRITY-SHA256 appears twice")
                size, digest, stage = attribute.length, "sha256", 2
                given = attribute.hmac
            if key is not None:
                header = _HEADER.pack(mtype, len(body) + 4 + size, cookie, tid)
                body[0:0] = header
                value = hmac.digest(key, body, digest)[:size]
                del body[:HEADER_LENGTH]
            elif len(given) == size:
                value = given
            else:
                raise ValueError("message integrity requested without a key")
            body += attr_head(atype, size)
            body += value
            continue
        elif atype == _FP_TYPE:
            header = _HEADER.pack(mtype, len(body) + 8, cookie, tid)
            crc = zlib.crc32(body, zlib.crc32(header)) ^ FINGERPRINT_XOR
            body += _FP_ATTR.pack(_FP_TYPE, 4, crc)
            stage = 3
            continue
        if stage:
            raise ValueError("only integrity and FINGERPRINT may follow MESSAGE-INTEGRITY")
        value = attribute.encode_value(tid)
        length = len(value)
        if length > 0xFFFF:
            raise ValueError(f"attribute {atype:#06x} value too long")
        body += attr_head(atype, length)
        body += value
        body += padding[length & 3]
    if len(body) > 0xFFFF:
        raise ValueError("message too long")
    return _HEADER.pack(mtype, len(body), cookie, tid) + body


def error_response(req: Message, code: int, *extra: Attribute) -> Message:
    """An error response to C{req} with the RFC's reason phrase for C{code}."""
    return response_to(req, (ErrorCode.for_code(code), *extra), MessageClass.ERROR)
