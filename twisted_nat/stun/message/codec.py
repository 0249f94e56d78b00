"""
The STUN wire codec (RFC 8489): L{encode} and L{decode}, plain functions
with no I/O and no clock, so that the client, the server, the hole puncher
and the tests share one implementation.  L{decode} raises
L{STUNDecodeError} and nothing else, for any input, so hostile datagrams
are dropped with one C{except}; which attribute types it returns as typed
values is up to the L{AttributeTable} it is given.
"""

from __future__ import annotations

import struct
import zlib

from twisted_nat.errors import STUNDecodeError
from twisted_nat.stun.attributes.base import (
    MAGIC_COOKIE_BYTES,
    Attribute,
    UnknownAttribute,
    new_instance,
    slot_setter,
)
from twisted_nat.stun.attributes.integrity import (
    Fingerprint,
    MessageIntegrity,
    MessageIntegritySHA256,
)
from twisted_nat.stun.attributes.registry import STUN_ATTRIBUTES, AttributeTable
from twisted_nat.stun.message.integrity import SHA1, SHA256, keyed_hmac
from twisted_nat.stun.message.value import (
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    KNOWN_TYPES,
    Message,
    split_message_type,
)

_MI_TYPE = MessageIntegrity.TYPE
_MI256_TYPE = MessageIntegritySHA256.TYPE
_FP_TYPE = Fingerprint.TYPE

_HEADER = struct.Struct("!HH4s12s")
_HEADER_HEAD = struct.Struct("!HH")
_ATTR_HEAD = struct.Struct("!HH")
_FP_ATTR = struct.Struct("!HHI")
_set_length = struct.Struct("!H").pack_into
_I = struct.Struct("!I")


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
                        size, states, stage = 20, SHA1, 1
                    else:
                        if type(attribute) is not MessageIntegritySHA256:
                            raise ValueError(f"{attribute!r} does not carry an HMAC")
                        if stage == 2:
                            raise ValueError("MESSAGE-INTEGRITY-SHA256 appears twice")
                        size, states, stage = attribute.length, SHA256, 2
                    if key is not None:
                        _set_length(out, 2, len(out) - HEADER_LENGTH + 4 + size)
                        value = keyed_hmac(key, out, states)[:size]
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


def decode(
    data: bytes, allow_rfc3489: bool = False, table: AttributeTable = STUN_ATTRIBUTES
) -> Message:
    """
    Parse one STUN message that fills C{data} exactly.

    Attributes after MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256
    and FINGERPRINT are ignored (RFC 8489 14.5); nothing may follow
    FINGERPRINT, whose CRC is checked.  Without C{allow_rfc3489} a message
    lacking the magic cookie is refused.  Attribute types C{table} lacks
    become L{UnknownAttribute}s.

    @raise STUNDecodeError: for any input that is not such a message.
    """
    # table is not keyword-only: Python 3.11 does not specialise calls of
    # functions with keyword-only parameters.
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
        decoders = table.decoders
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
                    fingerprint: Fingerprint = new_instance(Fingerprint)
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
                    integrity: MessageIntegrity = new_instance(MessageIntegrity)
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
        split = _known_type(mtype)
        if split is None:
            split = split_message_type(mtype)
        message: Message = new_instance(Message)
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


# KNOWN_TYPES.get, bound once: Python 3.11 calls a method of an imported
# name through a slower path than one of a module's own.
_known_type = KNOWN_TYPES.get

# Decoders build instances with these slot setters instead of calling the
# classes: see attributes.base.slot_setter.
_set_method = slot_setter(Message, "method")
_set_class = slot_setter(Message, "message_class")
_set_tid = slot_setter(Message, "transaction_id")
_set_attributes = slot_setter(Message, "attributes")
_set_cookie = slot_setter(Message, "cookie")
_set_raw = slot_setter(Message, "raw")
_set_offsets = slot_setter(Message, "integrity_offsets")
_set_hmac = slot_setter(MessageIntegrity, "hmac")
_set_crc = slot_setter(Fingerprint, "crc")
