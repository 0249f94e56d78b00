"""The attributes of ICE connectivity checks (RFC 8445 section 16.1)."""

from __future__ import annotations

import struct

import attrs

from twisted_nat.stun.attributes.base import (
    Attribute,
    EmptyAttribute,
    builds_unchecked,
    new_instance,
    slot_setter,
)

_I = struct.Struct("!I")
_Q = struct.Struct("!Q")


@attrs.frozen
class Priority(Attribute):
    TYPE = 0x0024
    priority: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _I.pack(self.priority)

    @classmethod
    @builds_unchecked("priority")
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) != 4:
            raise ValueError("PRIORITY must be 4 bytes")
        self: Priority = new_instance(cls)
        _set_priority(self, _I.unpack(value)[0])
        return self


_set_priority = slot_setter(Priority, "priority")


@attrs.frozen
class UseCandidate(EmptyAttribute):
    TYPE = 0x0025
    NAME = "USE-CANDIDATE"


@attrs.frozen
class _TieBreaker(Attribute):
    tie_breaker: int

    def encode_value(self, transaction_id: bytes) -> bytes:
        return _Q.pack(self.tie_breaker)

    @classmethod
    @builds_unchecked("tie_breaker")
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) != 8:
            raise ValueError("ICE-CONTROLLED/ICE-CONTROLLING must be 8 bytes")
        self: _TieBreaker = new_instance(cls)
        _set_tie_breaker(self, _Q.unpack(value)[0])
        return self


_set_tie_breaker = slot_setter(_TieBreaker, "tie_breaker")


@attrs.frozen
class IceControlled(_TieBreaker):
    TYPE = 0x8029


@attrs.frozen
class IceControlling(_TieBreaker):
    TYPE = 0x802A
