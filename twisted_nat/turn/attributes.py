"""
The attributes TURN (RFC 8656) adds to STUN, and L{TURN_ATTRIBUTES}, the
attribute table the TURN client decodes with (STUN's and these).

They live here rather than in L{twisted_nat.stun.attributes} because plain
STUN never needs them: a Binding client decodes any of them as an
L{UnknownAttribute} and loses nothing.

As in the STUN attributes, value decoders raise C{ValueError} (or
C{struct.error}) for malformed values, which the message decoder turns into
L{twisted_nat.errors.STUNDecodeError}.
"""

from __future__ import annotations

import struct

import attrs

from twisted_nat.stun.attributes import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    STUN_ATTRIBUTES,
    Attribute,
    EmptyAttribute,
    FixedIntegerAttribute,
    OpaqueAttribute,
    XorAddressAttribute,
)

TRANSPORT_UDP = 17
"""REQUESTED-TRANSPORT's protocol number for a UDP relay, the only one RFC 8656 defines."""

_I = struct.Struct("!I")
_H2 = struct.Struct("!H2x")
_B3 = struct.Struct("!B3x")


@attrs.frozen
class ChannelNumber(FixedIntegerAttribute):
    """
    CHANNEL-NUMBER: the channel a ChannelBind request binds (0x4000-0x4FFF),
    followed by two reserved bytes.
    """

    TYPE = 0x000C
    LAYOUT = _H2
    FIELD = "number"
    NAME = "CHANNEL-NUMBER"
    number: int


@attrs.frozen
class Lifetime(FixedIntegerAttribute):
    """LIFETIME: seconds until the allocation expires; 0 in a Refresh deallocates."""

    TYPE = 0x000D
    LAYOUT = _I
    FIELD = "seconds"
    NAME = "LIFETIME"
    seconds: int


@attrs.frozen
class XorPeerAddress(XorAddressAttribute):
    """XOR-PEER-ADDRESS: a peer's address as the relay sees it."""

    TYPE = 0x0012


@attrs.frozen
class Data(OpaqueAttribute):
    """DATA: the application datagram a Send or Data indication carries."""

    TYPE = 0x0013


@attrs.frozen
class XorRelayedAddress(XorAddressAttribute):
    """XOR-RELAYED-ADDRESS: the address the server allocated for us."""

    TYPE = 0x0016


@attrs.frozen
class RequestedAddressFamily(FixedIntegerAttribute):
    """
    REQUESTED-ADDRESS-FAMILY: which family the relayed address should have
    (L{FAMILY_IPV4} or L{FAMILY_IPV6}), followed by three reserved bytes.
    """

    TYPE = 0x0017
    LAYOUT = _B3
    FIELD = "family"
    NAME = "REQUESTED-ADDRESS-FAMILY"
    family: int = FAMILY_IPV4

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        decoded = super().decode_value(value, transaction_id)
        assert isinstance(decoded, RequestedAddressFamily)
        if decoded.family not in (FAMILY_IPV4, FAMILY_IPV6):
            raise ValueError(f"unknown address family {decoded.family}")
        return decoded


@attrs.frozen
class EvenPort(Attribute):
    """
    EVEN-PORT: ask for an even relayed port and, with C{reserve}, for the
    next port to be held back under a RESERVATION-TOKEN (RTP and RTCP).
    """

    TYPE = 0x0018
    reserve: bool = False

    def encode_value(self, transaction_id: bytes) -> bytes:
        return b"\x80" if self.reserve else b"\x00"

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) != 1:
            raise ValueError("EVEN-PORT must be 1 byte")
        return cls(bool(value[0] & 0x80))


@attrs.frozen
class RequestedTransport(FixedIntegerAttribute):
    """REQUESTED-TRANSPORT: the relay's protocol; 17 (UDP) is what RFC 8656 defines."""

    TYPE = 0x0019
    LAYOUT = _B3
    FIELD = "protocol"
    NAME = "REQUESTED-TRANSPORT"
    protocol: int = TRANSPORT_UDP


@attrs.frozen
class DontFragment(EmptyAttribute):
    """DONT-FRAGMENT: ask the relay to set the DF bit towards the peer; no value."""

    TYPE = 0x001A
    NAME = "DONT-FRAGMENT"


@attrs.frozen
class ReservationToken(Attribute):
    """RESERVATION-TOKEN: 8 opaque bytes naming a relayed port held back by EVEN-PORT."""

    TYPE = 0x0022
    token: bytes

    def encode_value(self, transaction_id: bytes) -> bytes:
        return self.token

    @classmethod
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        if len(value) != 8:
            raise ValueError("RESERVATION-TOKEN must be 8 bytes")
        return cls(bytes(value))


TURN_ATTRIBUTES = STUN_ATTRIBUTES.extended(
    ChannelNumber,
    Lifetime,
    XorPeerAddress,
    Data,
    XorRelayedAddress,
    RequestedAddressFamily,
    EvenPort,
    RequestedTransport,
    DontFragment,
    ReservationToken,
)
"""STUN's attribute table with TURN's attributes: what the TURN client decodes with."""

__all__ = [
    "FAMILY_IPV4",
    "FAMILY_IPV6",
    "TRANSPORT_UDP",
    "TURN_ATTRIBUTES",
    "ChannelNumber",
    "Data",
    "DontFragment",
    "EvenPort",
    "Lifetime",
    "RequestedAddressFamily",
    "RequestedTransport",
    "ReservationToken",
    "XorPeerAddress",
    "XorRelayedAddress",
]
