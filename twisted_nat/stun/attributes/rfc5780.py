"""
The attributes of NAT behaviour discovery (RFC 5780) that are not addresses:
CHANGE-REQUEST, RESPONSE-PORT and PADDING.  RESPONSE-ORIGIN and OTHER-ADDRESS
are with the other addresses (L{twisted_nat.stun.attributes.address}).
"""

from __future__ import annotations

import struct

import attrs

from twisted_nat.stun.attributes.base import Attribute, FixedIntegerAttribute
from twisted_nat.stun.attributes.text import OpaqueAttribute

_I = struct.Struct("!I")
_H2 = struct.Struct("!H2x")


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


@attrs.frozen
class ResponsePort(FixedIntegerAttribute):
    """Send the response to this port instead of the source port."""

    TYPE = 0x0027
    LAYOUT = _H2
    FIELD = "port"
    NAME = "RESPONSE-PORT"
    port: int


@attrs.frozen
class Padding(OpaqueAttribute):
    """PADDING, used to probe path MTU behaviour."""

    TYPE = 0x0026
