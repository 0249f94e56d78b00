"""ERROR-CODE and UNKNOWN-ATTRIBUTES: what an error response says went wrong."""

from __future__ import annotations

import struct

import attrs

from twisted_nat.stun.attributes.base import Attribute

_I = struct.Struct("!I")

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
