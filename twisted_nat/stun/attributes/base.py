"""
The base of every STUN attribute value, and the wire constants they share.

An attribute is a frozen attrs value that encodes its own value field
(C{encode_value}) and, as a class method, decodes one (C{decode_value}).
Value decoders raise C{ValueError} (or C{struct.error}, C{UnicodeError},
C{OSError} from C{inet_ntop}); the message decoder turns all of those into
the one documented L{twisted_nat.errors.STUNDecodeError}.
"""

from __future__ import annotations

import abc
import struct
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import attrs

MAGIC_COOKIE = 0x2112A442
MAGIC_COOKIE_BYTES = struct.pack("!I", MAGIC_COOKIE)

FAMILY_IPV4 = 0x01
FAMILY_IPV6 = 0x02


@attrs.frozen
class Attribute(abc.ABC):
    """
    Base of every attribute value.

    C{TYPE} is the 16-bit attribute type.  Types below 0x8000 are
    comprehension-required: a receiver that does not know one must reject the
    message (RFC 8489 section 14).  Concrete subclasses also provide a
    C{decode_value(value, transaction_id)} class method.
    """

    TYPE: ClassVar[int] = -1

    @abc.abstractmethod
    def encode_value(self, transaction_id: bytes) -> bytes:
        """Return the value field, without header or padding."""

    @property
    def attr_type(self) -> int:
        return self.TYPE


def is_comprehension_required(attr_type: int) -> bool:
    return attr_type < 0x8000


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


@attrs.frozen
class EmptyAttribute(Attribute):
    """
    A flag: the attribute's presence says it all and its value field is
    empty (USE-CANDIDATE; TURN's DONT-FRAGMENT).  A subclass states its
    C{NAME} for errors.
    """

    NAME: ClassVar[str]

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b""

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if value:
            raise ValueError(f"{cls.NAME} carries no value")
        return cls()


# --- building values without __init__ ------------------------------------------------

new_instance = object.__new__
"""An instance of a class without running its C{__init__}; see L{slot_setter}."""

_F = TypeVar("_F", bound=Callable[..., Any])


def slot_setter(cls: type, name: str) -> Callable[[object, object], None]:
    """
    The setter of C{cls}'s slot C{name}, which writes past the frozen
    C{__setattr__}.

    The decoders of the attributes in every ICE check and Binding response
    build instances with L{new_instance} and these setters instead of
    C{cls(...)}, skipping the generated C{__init__}.  Only fields without
    validator or converter may be set this way; L{builds_unchecked} lets an
    attribute table refuse subclasses such a decoder would build wrong.
    """
    setter: Callable[[object, object], None] = getattr(cls, name).__set__
    return setter


def builds_unchecked(*fields: str) -> Callable[[_F], _F]:
    """
    Mark a C{decode_value} that builds with L{slot_setter}s and sets exactly
    C{fields}: see L{unchecked_fields}.
    """

    def mark(decode_value: _F) -> _F:
        decode_value.unchecked_fields = fields  # type: ignore[attr-defined]
        return decode_value

    return mark


def unchecked_fields(cls: type[Attribute]) -> tuple[str, ...] | None:
    """
    The fields C{cls}'s C{decode_value} sets without C{__init__}, if it was
    marked with L{builds_unchecked}; None for a decoder that calls the class.
    """
    decode_value = getattr(cls, "decode_value", None)
    fields: tuple[str, ...] | None = getattr(
        getattr(decode_value, "__func__", None), "unchecked_fields", None
    )
    return fields
