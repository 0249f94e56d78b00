"""
STUN attributes as immutable values, each knowing how to encode and decode
its own value field.

Attributes are frozen attrs classes registered by type code in
L{ATTRIBUTE_TYPES}; the message codec (L{twisted_nat.stun.message}) looks a
type up there and falls back to L{UnknownAttribute}, which keeps the raw
value so that a message carrying attributes we do not understand still
round-trips byte for byte.  Later layers (TURN) register their own classes
the same way.

Value decoders raise C{ValueError} (or C{struct.error}, C{UnicodeError},
C{OSError} from C{inet_ntop}); the message decoder turns all of those into
the one documented L{twisted_nat.errors.STUNDecodeError}.
"""

from __future__ import annotations

import abc
import socket
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Protocol, TypeVar, cast

import attrs

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)

FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02

_HH = struct.Struct("!HH")
_I = struct.Struct("!I")
_H2 = struct.Struct("!H2x")
_Q = struct.Struct("!Q")
_ADDR_HEAD = struct.Struct("!xBH")


class _Decodable(Protocol):
    TYPE: ClassVar[int]

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute: ...


@attrs.frozen
class Attribute(abc.ABC):
    """
    Base of every attribute value.

    C{TYPE} is the 16-bit attribute type.  Types below 0x8000 are
    comprehension-required: a receiver that does not know one must reject the
    message (RFC 8489 section 14).  Registered subclasses also provide a
    C{decode_value(value, transaction_id)} class method.
    """

    TYPE: ClassVar[int] = -1

    @abc.abstractmethod
    def encode_value(self, transaction_id: bytes) -> bytes:
        """Return the value field, without header or padding."""

    @property
    def attr_type(self) -> int:
        return self.TYPE


@attrs.frozen
class FixedIntegerAttribute(Attribute):
    """
    An attribute whose value is one unsigned integer in a fixed layout,
    reserved bytes zero (RESPONSE-PORT; TURN's LIFETIME, CHANNEL-NUMBER,
    REQUESTED-TRANSPORT ...).  A subclass has exactly one field and states
    its C{LAYOUT}, the field's C{FIELD} name, and its C{NAME} for errors.
    """

    LAYOUT: ClassVar[struct.Struct]
    FIELD: ClassVar[str]
    NAME: ClassVar[str]

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.LAYOUT.pack(getattr(self, self.FIELD))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) != cls.LAYOUT.size:
            raise ValueError(f"{cls.NAME} must be {cls.LAYOUT.size} bytes")
        return cls(cls.LAYOUT.unpack(value)[0])  # type: ignore[call-arg]


Decoder = Callable[[bytes, bytes], Attribute]
"""A registered class's C{decode_value}: value field and transaction id in."""

ATTRIBUTE_TYPES: dict[int, Decoder] = {}
"""Decoders of the known attribute types, by type code."""

_A = TypeVar("_A", bound=_Decodable)


def register(cls: type[_A]) -> type[_A]:
    """
    Class decorator adding C{cls} to L{ATTRIBUTE_TYPES}.

    @raise TypeError: C{cls} inherits a C{decode_value} that builds instances
        without C{__init__} (see L{_slot_setter}) but has fields, validators
        or converters that decoder does not know about; it must override
        C{decode_value}.
    """
    if cls.TYPE in ATTRIBUTE_TYPES:
        raise ValueError(f"attribute type {cls.TYPE:#06x} registered twice")
    expected = _UNCHECKED_BUILDERS.get(getattr(cls.decode_value, "__func__", None))
    if expected is not None:
        fields = attrs.fields(cast(Any, cls))
        if tuple(f.name for f in fields) != expected or any(
            f.validator is not None or f.converter is not None for f in fields
        ):
            raise TypeError(f"{cls.__name__} must override decode_value")
    ATTRIBUTE_TYPES[cls.TYPE] = cls.decode_value
    return cls


def is_comprehension_required(attr_type: int) -> bool:
    return attr_type < 0x8000


_new = object.__new__

_UNCHECKED_BUILDERS: dict[object, tuple[str, ...]] = {}
"""C{decode_value} functions that skip C{__init__}, and the fields they set."""

_F = TypeVar("_F", bound=Callable[..., Any])


def _builds_unchecked(*fields: str) -> Callable[[_F], _F]:
    """
    Mark a C{decode_value} that builds with L{_slot_setter}s and sets exactly
    C{fields}, so that L{register} refuses subclasses it would build wrong.
    """

    def mark(decode_value: _F) -> _F:
        _UNCHECKED_BUILDERS[decode_value] = fields
        return decode_value

    return mark


def _slot_setter(cls: type, name: str) -> Callable[[object, object], None]:
    """
    The setter of C{cls}'s slot C{name}, which writes past the frozen
    C{__setattr__}.

    Decoders of the attributes in every ICE check and Binding response build
    instances with C{_new(cls)} and these setters instead of C{cls(...)}:
    that skips the generated C{__init__} (a Python frame), a third of the
    cost of decoding such an attribute.  Only fields without validator or
    converter may be set this way (L{_builds_unchecked} makes L{register}
    check); the tests compare the results with normally built values.
    """
    setter: Callable[[object, object], None] = getattr(cls, name).__set__
    return setter


@attrs.frozen
class UnknownAttribute(Attribute):
    """An attribute whose type we do not know: its value is kept verbatim."""

    type_code: int
    value: bytes

    @property
    def attr_type(self) -> int:
        return self.type_code

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value


# --- addresses -------------------------------------------------------------


def pack_address(host: str, port: int) -> bytes:
    """Encode the plain address value (MAPPED-ADDRESS layout)."""
    if ":" in host:
        return _ADDR_HEAD.pack(FAMILY_IPV6, port) + socket.inet_pton(socket.AF_INET6, host)
    return _ADDR_HEAD.pack(FAMILY_IPV4, port) + socket.inet_pton(socket.AF_INET, host)


def unpack_address(value: bytes) -> tuple[str, int]:
    family, port = _ADDR_HEAD.unpack_from(value)
    if family == FAMILY_IPV4 and len(value) == 8:
        return socket.inet_ntop(socket.AF_INET, value[4:8]), port
    if family == FAMILY_IPV6 and len(value) == 20:
        return socket.inet_ntop(socket.AF_INET6, value[4:20]), port
    raise ValueError(f"bad address family {family} or length {len(value)}")


def _xor_pad(transaction_id: bytes, length: int) -> int:
    if length == 4:
        return MAGIC_COOKIE
    return int.from_bytes(MAGIC_COOKIE_BYTES + transaction_id, "big")


def pack_xor_address(host: str, port: int, transaction_id: bytes) -> bytes:
    """Encode the XOR-MAPPED-ADDRESS layout (RFC 8489 section 14.2)."""
    if ":" in host:
        family, raw = FAMILY_IPV6, socket.inet_pton(socket.AF_INET6, host)
    else:
        family, raw = FAMILY_IPV4, socket.inet_pton(socket.AF_INET, host)
    masked = int.from_bytes(raw, "big") ^ _xor_pad(transaction_id, len(raw))
    return _ADDR_HEAD.pack(family, port ^ (MAGIC_COOKIE >> 16)) + masked.to_bytes(len(raw), "big")


def unpack_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    family, xport = _ADDR_HEAD.unpack_from(value)
    if family == FAMILY_IPV4 and len(value) == 8:
        af, size = socket.AF_INET, 4
    elif family == FAMILY_IPV6 and len(value) == 20:
        af, size = socket.AF_INET6, 16
    else:
        raise ValueError(f"bad address family {family} or length {len(value)}")
    raw = int.from_bytes(value[4:], "big") ^ _xor_pad(transaction_id, size)
    return socket.inet_ntop(af, raw.to_bytes(size, "big")), xport ^ (MAGIC_COOKIE >> 16)


@attrs.frozen
class AddressAttribute(Attribute):
    """An IPv4 or IPv6 transport address, in the plain layout."""

    host: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def encode_value(self, transaction_id: bytes) -> bytes:
        return pack_address(self.host, self.port)

    @classmethod
    @_builds_unchecked("host", "port")
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        host, port = unpack_address(value)
        self: AddressAttribute = _new(cls)
        _set_host(self, host)
        _set_port(self, port)
        return self


_set_host = _slot_setter(AddressAttribute, "host")
_set_port = _slot_setter(AddressAttribute, "port")


@attrs.frozen
class XorAddressAttribute(AddressAttribute):
    """A transport address obfuscated with the magic cookie and transaction id."""

    def encode_value(self, transaction_id: bytes) -> bytes:
        return pack_xor_address(self.host, self.port, transaction_id)

    @classmethod
    @_builds_unchecked("host", "port")
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        host, port = unpack_xor_address(value, transaction_id)
        self: XorAddressAttribute = _new(cls)
        _set_host(self, host)
        _set_port(self, port)
        return self


@register
@attrs.frozen
class MappedAddress(AddressAttribute):
    TYPE = 0x0001


@register
@attrs.frozen
class SourceAddress(AddressAttribute):
    """RFC 3489's SOURCE-ADDRESS, sent by legacy servers."""

    TYPE = 0x0004


@register
@attrs.frozen
class ChangedAddress(AddressAttribute):
    """RFC 3489's CHANGED-ADDRESS: the legacy spelling of OTHER-ADDRESS."""

    TYPE = 0x0005


@register
@attrs.frozen
class XorMappedAddress(XorAddressAttribute):
    TYPE = 0x0020


@register
@attrs.frozen
class AlternateServer(AddressAttribute):
    TYPE = 0x8023


@register
@attrs.frozen
class ResponseOrigin(AddressAttribute):
    """RFC 5780: the address and port the response was sent from."""

    TYPE = 0x802B


@register
@attrs.frozen
class OtherAddress(AddressAttribute):
    """RFC 5780: the server's alternate address and port."""

    TYPE = 0x802C


# --- text ------------------------------------------------------------------


@attrs.frozen
class _TextAttribute(Attribute):
    """A UTF-8 string value."""

    value: str

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value.encode("utf-8")

    @classmethod
    @_builds_unchecked("value")
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        self: _TextAttribute = _new(cls)
        _set_text(self, value.decode())
        return self


_set_text = _slot_setter(_TextAttribute, "value")


@register
@attrs.frozen
class Username(_TextAttribute):
    TYPE = 0x0006


@register
@attrs.frozen
class Realm(_TextAttribute):
    TYPE = 0x0014


@register
@attrs.frozen
class Nonce(_TextAttribute):
    TYPE = 0x0015


@register
@attrs.frozen
class Software(_TextAttribute):
    TYPE = 0x8022


@register
@attrs.frozen
class AlternateDomain(_TextAttribute):
    TYPE = 0x8003


# --- opaque ----------------------------------------------------------------


@attrs.frozen
class _OpaqueAttribute(Attribute):
    value: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        return cls(bytes(value))


@register
@attrs.frozen
class UserHash(_OpaqueAttribute):
    """RFC 8489 USERHASH: SHA-256(username ":" realm), 32 bytes."""

    TYPE = 0x001E

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) != 32:
            raise ValueError("USERHASH must be 32 bytes")
        return cls(bytes(value))


@register
@attrs.frozen
class Padding(_OpaqueAttribute):
    """RFC 5780 PADDING, used to probe path MTU behaviour."""

    TYPE = 0x0026


@register
@attrs.frozen
class MessageIntegrity(Attribute):
    """
    HMAC-SHA1 over the message so far.

    An empty C{hmac} is a placeholder: the encoder computes the value from the
    key it is given.  A decoded message carries the received value.
    """

    TYPE = 0x0008
    hmac: bytes = b""

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.hmac

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) != 20:
            raise ValueError("MESSAGE-INTEGRITY must be 20 bytes")
        return cls(bytes(value))


@register
@attrs.frozen
class MessageIntegritySHA256(Attribute):
    """
    HMAC-SHA256 over the message so far, possibly truncated.

    C{length} is how many bytes of the HMAC to send (16 to 32, a multiple of
    4); an empty C{hmac} is a placeholder computed by the encoder.
    """

    TYPE = 0x001C
    hmac: bytes = b""
    length: int = attrs.field(default=32)

    @length.validator
    def _check_length(self, attribute: object, value: int) -> None:
        if not 16 <= value <= 32 or value % 4:
            raise ValueError("MESSAGE-INTEGRITY-SHA256 length must be 16..32, a multiple of 4")

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.hmac

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        return cls(bytes(value), len(value))


@register
@attrs.frozen
class Fingerprint(Attribute):
    """
    CRC-32 of the message XOR 0x5354554e; always the last attribute.

    The encoder always computes it, so the default value is a placeholder;
    the decoder checks the received value and raises if it is wrong.
    """

    TYPE = 0x8028
    crc: int = 0

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _I.pack(self.crc)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) != 4:
            raise ValueError("FINGERPRINT must be 4 bytes")
        return cls(_I.unpack(value)[0])


# --- errors and unknown attributes -----------------------------------------


ERROR_REASONS: dict[int, str] = {
    300: "Try Alternate",
    400: "Bad Request",
    401: "Unauthenticated",
    403: "Forbidden",
    420: "Unknown Attribute",
    437: "Allocation Mismatch",
    438: "Stale Nonce",
    440: "Address Family not Supported",
    441: "Wrong Credentials",
    442: "Unsupported Transport Protocol",
    443: "Peer Address Family Mismatch",
    486: "Allocation Quota Reached",
    487: "Role Conflict",
    500: "Server Error",
    508: "Insufficient Capacity",
}


@register
@attrs.frozen
class ErrorCode(Attribute):
    TYPE = 0x0009
    code: int = attrs.field()
    reason: str = ""

    @code.validator
    def _check_code(self, attribute: object, value: int) -> None:
        if not 300 <= value <= 699:
            raise ValueError(f"error code {value} outside 300..699")

    @classmethod
    def for_code(cls, code: int) -> ErrorCode:
        """An ERROR-CODE with the reason phrase the RFCs suggest."""
        return cls(code, ERROR_REASONS.get(code, "Error"))

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _I.pack(((self.code // 100) << 8) | (self.code % 100)) + self.reason.encode("utf-8")

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) < 4:
            raise ValueError("ERROR-CODE too short")
        head = _I.unpack_from(value)[0]
        klass, number = (head >> 8) & 0x7, head & 0xFF
        if not 3 <= klass <= 6 or number > 99:
            raise ValueError("bad ERROR-CODE class or number")
        return cls(klass * 100 + number, value[4:].decode("utf-8"))


@register
@attrs.frozen
class UnknownAttributes(Attribute):
    TYPE = 0x000A
    types: tuple[int, ...] = ()

    def encode_value(self, transaction_id: bytes) -> bytes:
        return struct.pack(f"!{len(self.types)}H", *self.types)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) % 2:
            raise ValueError("UNKNOWN-ATTRIBUTES length must be even")
        return cls(struct.unpack(f"!{len(value) // 2}H", value))


# --- password algorithms (RFC 8489 section 14.11, 14.12) --------------------

PASSWORD_ALGORITHM_MD5 = 0x0001
PASSWORD_ALGORITHM_SHA256 = 0x0002


def _pack_algorithm(algorithm: int, params: bytes) -> bytes:
    pad = (-len(params)) % 4
    return _HH.pack(algorithm, len(params)) + params + b"\x00" * pad


def _unpack_algorithms(value: bytes) -> list[tuple[int, bytes]]:
    found: list[tuple[int, bytes]] = []
    offset = 0
    while offset < len(value):
        algorithm, length = _HH.unpack_from(value, offset)
        offset += 4
        if offset + length > len(value):
            raise ValueError("password algorithm parameters overrun")
        found.append((algorithm, bytes(value[offset : offset + length])))
        offset += length + ((-length) % 4)
    return found


@register
@attrs.frozen
class PasswordAlgorithm(Attribute):
    TYPE = 0x001D
    algorithm: int
    parameters: bytes = b""

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _pack_algorithm(self.algorithm, self.parameters)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        found = _unpack_algorithms(value)
        if len(found) != 1:
            raise ValueError("PASSWORD-ALGORITHM holds exactly one algorithm")
        return cls(*found[0])


@register
@attrs.frozen
class PasswordAlgorithms(Attribute):
    TYPE = 0x8002
    algorithms: tuple[tuple[int, bytes], ...] = ()

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b"".join(_pack_algorithm(a, p) for a, p in self.algorithms)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        return cls(tuple(_unpack_algorithms(value)))


# --- RFC 5780 ----------------------------------------------------------------


@register
@attrs.frozen
class ChangeRequest(Attribute):
    """Ask the server to answer from its other IP address and/or port."""

    TYPE = 0x0003
    change_ip: bool = False
    change_port: bool = False

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _I.pack((0x4 if self.change_ip else 0) | (0x2 if self.change_port else 0))

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) != 4:
            raise ValueError("CHANGE-REQUEST must be 4 bytes")
        flags = _I.unpack(value)[0]
        return cls(bool(flags & 0x4), bool(flags & 0x2))


@register
@attrs.frozen
class ResponsePort(FixedIntegerAttribute):
    """RFC 5780: send the response to this port instead of the source port."""

    TYPE = 0x0027
    LAYOUT = _H2
    FIELD = "port"
    NAME = "RESPONSE-PORT"
    port: int


# --- ICE (RFC 8445) ------------------------------------------------------------


@register
@attrs.frozen
class Priority(Attribute):
    TYPE = 0x0024
    priority: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _I.pack(self.priority)

    @classmethod
    @_builds_unchecked("priority")
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) != 4:
            raise ValueError("PRIORITY must be 4 bytes")
        self: Priority = _new(cls)
        _set_priority(self, _I.unpack(value)[0])
        return self


_set_priority = _slot_setter(Priority, "priority")


@register
@attrs.frozen
class UseCandidate(Attribute):
    TYPE = 0x0025

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b""

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if value:
            raise ValueError("USE-CANDIDATE carries no value")
        return cls()


@attrs.frozen
class _TieBreaker(Attribute):
    tie_breaker: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _Q.pack(self.tie_breaker)

    @classmethod
    @_builds_unchecked("tie_breaker")
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) != 8:
            raise ValueError("ICE-CONTROLLED/ICE-CONTROLLING must be 8 bytes")
        self: _TieBreaker = _new(cls)
        _set_tie_breaker(self, _Q.unpack(value)[0])
        return self


_set_tie_breaker = _slot_setter(_TieBreaker, "tie_breaker")


@register
@attrs.frozen
class IceControlled(_TieBreaker):
    TYPE = 0x8029


@register
@attrs.frozen
class IceControlling(_TieBreaker):
    TYPE = 0x802A
