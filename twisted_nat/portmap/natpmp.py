"""
NAT-PMP on the wire (RFC 6886 3), pure: the external address request and
the UDP mapping request, and their responses.  Anything that is not a
well-formed response raises L{NATPMPDecodeError}, whatever the bytes.
"""

from __future__ import annotations

import enum
import ipaddress
import struct

import attrs

PORT = 5351
VERSION = 0
OP_ADDRESS = 0
OP_MAP_UDP = 1
RESPONSE = 0x80

_MAP = struct.Struct("!BBHHHI")
_HEAD = struct.Struct("!BBHI")
_ADDRESS_BODY = struct.Struct("!4s")
_MAP_BODY = struct.Struct("!HHI")


class ResultCode(enum.IntEnum):
    SUCCESS = 0
    UNSUPPORTED_VERSION = 1
    NOT_AUTHORIZED = 2
    NETWORK_FAILURE = 3
    OUT_OF_RESOURCES = 4
    UNSUPPORTED_OPCODE = 5


def result_name(code: int) -> str:
    try:
        return ResultCode(code).name
    except ValueError:
        return f"result {code}"


class NATPMPDecodeError(ValueError):
    """Bytes that are not a NAT-PMP response."""


def address_request() -> bytes:
    return bytes([VERSION, OP_ADDRESS])


def map_request(internal_port: int, suggested_port: int, lifetime: int) -> bytes:
    """A UDP mapping request; lifetime 0 (and suggested port 0) deletes it."""
    return _MAP.pack(VERSION, OP_MAP_UDP, 0, internal_port, suggested_port, lifetime)


@attrs.frozen
class AddressResponse:
    result: int
    epoch: int
    external_ip: str


@attrs.frozen
class MapResponse:
    result: int
    epoch: int
    internal_port: int
    external_port: int
    lifetime: int


def decode(data: bytes) -> AddressResponse | MapResponse:
    """Either response; raises L{NATPMPDecodeError} for anything else."""
    if len(data) < _HEAD.size:
        raise NATPMPDecodeError(f"a NAT-PMP response has at least 8 bytes, not {len(data)}")
    version, opcode, result, epoch = _HEAD.unpack_from(data)
    if version != VERSION:
        raise NATPMPDecodeError(f"NAT-PMP version {version}")
    ours = (RESPONSE | OP_ADDRESS, RESPONSE | OP_MAP_UDP)
    if result and len(data) == _HEAD.size and opcode in ours:
        # An error may come as the header alone (RFC 6886 3.5).
        if opcode == RESPONSE | OP_ADDRESS:
            return AddressResponse(result, epoch, "0.0.0.0")
        return MapResponse(result, epoch, 0, 0, 0)
    if opcode == RESPONSE | OP_ADDRESS:
        if len(data) != _HEAD.size + _ADDRESS_BODY.size:
            raise NATPMPDecodeError(f"an address response has 12 bytes, not {len(data)}")
        (packed,) = _ADDRESS_BODY.unpack_from(data, _HEAD.size)
        return AddressResponse(result, epoch, str(ipaddress.IPv4Address(packed)))
    if opcode == RESPONSE | OP_MAP_UDP:
        if len(data) != _HEAD.size + _MAP_BODY.size:
            raise NATPMPDecodeError(f"a mapping response has 16 bytes, not {len(data)}")
        internal, external, lifetime = _MAP_BODY.unpack_from(data, _HEAD.size)
        return MapResponse(result, epoch, internal, external, lifetime)
    raise NATPMPDecodeError(f"not a NAT-PMP response we asked for: opcode {opcode:#x}")
