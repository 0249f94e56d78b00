"""
The attributes that protect a message: MESSAGE-INTEGRITY,
MESSAGE-INTEGRITY-SHA256 and FINGERPRINT, whose values the encoder computes,
and the password algorithms of the long-term credential (RFC 8489 14.11-14.12).
"""

from __future__ import annotations

import struct

import attrs

from twisted_nat.stun.attributes.base import Attribute

_HH = struct.Struct("!HH")
_I = struct.Struct("!I")


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


# --- password algorithms ------------------------------------------------------------

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


@attrs.frozen
class PasswordAlgorithms(Attribute):
    TYPE = 0x8002
    algorithms: tuple[tuple[int, bytes], ...] = ()

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b"".join(_pack_algorithm(a, p) for a, p in self.algorithms)

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        return cls(tuple(_unpack_algorithms(value)))
