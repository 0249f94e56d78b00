"""Attributes whose value is UTF-8 text or opaque bytes."""

from __future__ import annotations

import attrs

from twisted_nat.stun.attributes.base import (
    Attribute,
    builds_unchecked,
    new_instance,
    slot_setter,
)


@attrs.frozen
class TextAttribute(Attribute):
    """A UTF-8 string value."""

    value: str

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value.encode("utf-8")

    @classmethod
    @builds_unchecked("value")
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        self: TextAttribute = new_instance(cls)
        _set_text(self, value.decode())
        return self


_set_text = slot_setter(TextAttribute, "value")


@attrs.frozen
class Username(TextAttribute):
    TYPE = 0x0006


@attrs.frozen
class Realm(TextAttribute):
    TYPE = 0x0014


@attrs.frozen
class Nonce(TextAttribute):
    TYPE = 0x0015


@attrs.frozen
class Software(TextAttribute):
    TYPE = 0x8022


@attrs.frozen
class AlternateDomain(TextAttribute):
    TYPE = 0x8003


@attrs.frozen
class OpaqueAttribute(Attribute):
    """A value of raw bytes."""

    value: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.value

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        return cls(bytes(value))


@attrs.frozen
class UserHash(OpaqueAttribute):
    """RFC 8489 USERHASH: SHA-256(username ":" realm), 32 bytes."""

    TYPE = 0x001E

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) != 32:
            raise ValueError("USERHASH must be 32 bytes")
        return cls(bytes(value))
