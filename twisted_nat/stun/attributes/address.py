"""
Transport-address attributes, in the plain layout (MAPPED-ADDRESS) and the
one obfuscated with the magic cookie and transaction id (XOR-MAPPED-ADDRESS).
"""

from __future__ import annotations

import socket
import struct

import attrs

from twisted_nat.address import Address
from twisted_nat.stun.attributes.base import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    Attribute,
    builds_unchecked,
    new_instance,
    slot_setter,
)

_ADDR_HEAD = struct.Struct("!xBH")


def pack_address(host: str, port: int) -> bytes:
    """Encode the plain address value (MAPPED-ADDRESS layout)."""
    if ":" in host:
        return _ADDR_HEAD.pack(FAMILY_IPV6, port) + socket.inet_pton(socket.AF_INET6, host)
    return _ADDR_HEAD.pack(FAMILY_IPV4, port) + socket.inet_pton(socket.AF_INET, host)


def unpack_address(value: bytes) -> Address:
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


def unpack_xor_address(value: bytes, transaction_id: bytes) -> Address:
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
    def address(self) -> Address:
        return (self.host, self.port)

    def encode_value(self, transaction_id: bytes) -> bytes:
        return pack_address(self.host, self.port)

    @classmethod
    @builds_unchecked("host", "port")
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        host, port = unpack_address(value)
        self: AddressAttribute = new_instance(cls)
        _set_host(self, host)
        _set_port(self, port)
        return self


_set_host = slot_setter(AddressAttribute, "host")
_set_port = slot_setter(AddressAttribute, "port")


@attrs.frozen
class XorAddressAttribute(AddressAttribute):
    """A transport address obfuscated with the magic cookie and transaction id."""

    def encode_value(self, transaction_id: bytes) -> bytes:
        return pack_xor_address(self.host, self.port, transaction_id)

    @classmethod
    @builds_unchecked("host", "port")
    def decode_value(cls, value: bytes, transaction_id: bytes) -> Attribute:
        host, port = unpack_xor_address(value, transaction_id)
        self: XorAddressAttribute = new_instance(cls)
        _set_host(self, host)
        _set_port(self, port)
        return self


@attrs.frozen
class MappedAddress(AddressAttribute):
    TYPE = 0x0001


@attrs.frozen
class SourceAddress(AddressAttribute):
    """RFC 3489's SOURCE-ADDRESS, sent by legacy servers."""

    TYPE = 0x0004


@attrs.frozen
class ChangedAddress(AddressAttribute):
    """RFC 3489's CHANGED-ADDRESS: the legacy spelling of OTHER-ADDRESS."""

    TYPE = 0x0005


@attrs.frozen
class XorMappedAddress(XorAddressAttribute):
    TYPE = 0x0020


@attrs.frozen
class AlternateServer(AddressAttribute):
    TYPE = 0x8023


@attrs.frozen
class ResponseOrigin(AddressAttribute):
    """RFC 5780: the address and port the response was sent from."""

    TYPE = 0x802B


@attrs.frozen
class OtherAddress(AddressAttribute):
    """RFC 5780: the server's alternate address and port."""

    TYPE = 0x802C
