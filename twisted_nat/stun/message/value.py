"""
The STUN message as a value: its method and class, the 14-bit message type
they make, and the constructors of requests and responses.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable
from typing import TypeVar

import attrs

from twisted_nat.stun.attributes.base import (
    MAGIC_COOKIE_BYTES,
    Attribute,
    UnknownAttribute,
    is_comprehension_required,
)
from twisted_nat.stun.attributes.error import ErrorCode
from twisted_nat.stun.attributes.integrity import (
    Fingerprint,
    MessageIntegrity,
    MessageIntegritySHA256,
)

HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E

_SIGNED_TYPES = (MessageIntegrity.TYPE, MessageIntegritySHA256.TYPE)
_COMPUTED_TYPES = (*_SIGNED_TYPES, Fingerprint.TYPE)


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


KNOWN_TYPES: dict[int, tuple[int, MessageClass]] = {
    message_type(method, message_class): (method, message_class)
    for method in Method
    for message_class in MessageClass
}
"""
The message types of the known methods, already split, with the method as a
L{Method}; any other type's method is a plain int (L{split_message_type}).
"""


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
    attributes start, so that the HMAC is checked over exactly what arrived;
    neither takes part in equality.
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


def error_response(req: Message, code: int, *extra: Attribute) -> Message:
    """An error response to C{req} with the RFC's reason phrase for C{code}."""
    return response_to(req, (ErrorCode.for_code(code), *extra), MessageClass.ERROR)


def with_integrity(
    message: Message, sha1: bool = True, sha256: bool = False, fingerprint: bool = True
) -> Message:
    """
    C{message} with empty MESSAGE-INTEGRITY attributes (and FINGERPRINT) at
    the end, in the order RFC 8489 requires; the encoder computes their
    values from its key.
    """
    kept = tuple(a for a in message.attributes if a.attr_type not in _COMPUTED_TYPES)
    tail: list[Attribute] = []
    if sha1:
        tail.append(MessageIntegrity())
    if sha256:
        tail.append(MessageIntegritySHA256())
    if fingerprint:
        tail.append(Fingerprint())
    return attrs.evolve(message, attributes=kept + tuple(tail))


def has_integrity(message: Message) -> bool:
    return any(a.attr_type in _SIGNED_TYPES for a in message.attributes)
