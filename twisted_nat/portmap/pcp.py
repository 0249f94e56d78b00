"""
PCP's MAP opcode on the wire (RFC 6887 7 and 11), pure: requests encoded,
responses decoded and checked.  Anything that is not a well-formed MAP
response raises L{PCPDecodeError}, whatever the bytes.
"""

from __future__ import annotations

import enum
import ipaddress
import struct

import attrs

from twisted_nat.address import Address

PORT = 5351
VERSION = 2
NATPMP_VERSION = 0
OPCODE_MAP = 1
RESPONSE = 0x80
UDP = 17
NONCE_SIZE = 12
MAP_SIZE = 60
UNSUPPORTED = 1
"""UNSUPP_VERSION: the result a NAT-PMP-only gateway gives a PCP request."""
MAX_SIZE = 1100
"""RFC 6887 7: no PCP message is longer."""

_REQUEST = struct.Struct("!BBHI16s12sB3xHH16s")
_RESPONSE_HEAD = struct.Struct("!BBBBII12x")
_MAP_BODY = struct.Struct("!12sB3xHH16s")


class ResultCode(enum.IntEnum):
    SUCCESS = 0
    UNSUPP_VERSION = 1
    NOT_AUTHORIZED = 2
    MALFORMED_REQUEST = 3
    UNSUPP_OPCODE = 4
    UNSUPP_OPTION = 5
    MALFORMED_OPTION = 6
    NETWORK_FAILURE = 7
    NO_RESOURCES = 8
    UNSUPP_PROTOCOL = 9
    USER_EX_QUOTA = 10
    CANNOT_PROVIDE_EXTERNAL = 11
    ADDRESS_MISMATCH = 12
    EXCESSIVE_REMOTE_PEERS = 13


def result_name(code: int) -> str:
    try:
        return ResultCode(code).name
    except ValueError:
        return f"result {code}"


class PCPDecodeError(ValueError):
    """Bytes that are not a PCP MAP response."""


def _mapped(host: str) -> bytes:
    """An address in PCP's 128-bit form: IPv4 as IPv4-mapped IPv6."""
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed).packed
    return address.packed


def _unmapped(packed: bytes) -> str:
    address = ipaddress.IPv6Address(packed)
    return str(address.ipv4_mapped or address)


@attrs.frozen
class MapRequest:
    """
    A MAP request for UDP to our C{internal_port}, from C{client_ip} (the
    address the gateway sees us at), with a fresh nonce per mapping.
    C{lifetime} 0 deletes the mapping; C{suggested} asks for an external
    address again (after a restart, or at renewal).
    """

    nonce: bytes
    client_ip: str
    internal_port: int
    lifetime: int
    suggested: Address | None = None

    def encode(self) -> bytes:
        host, port = self.suggested if self.suggested is not None else ("0.0.0.0", 0)
        return _REQUEST.pack(
            VERSION,
            OPCODE_MAP,
            0,
            self.lifetime,
            _mapped(self.client_ip),
            self.nonce,
            UDP,
            self.internal_port,
            port,
            _mapped(host),
        )


@attrs.frozen
class MapResponse:
    """A decoded MAP response; C{result} other than 0 is the gateway's refusal."""

    result: int
    lifetime: int
    epoch: int
    nonce: bytes
    protocol: int
    internal_port: int
    external: Address

    def answers(self, request: MapRequest) -> bool:
        """Whether this is the answer to C{request} (RFC 6887 11.3: nonce, protocol, port)."""
        return (
            self.nonce == request.nonce
            and self.protocol == UDP
            and self.internal_port == request.internal_port
        )


@attrs.frozen
class NATPMPOnly:
    """A NAT-PMP server's answer to PCP (version 0): it does not speak PCP (RFC 6887 9)."""


def decode(data: bytes) -> MapResponse | NATPMPOnly:
    """A MAP response, or L{NATPMPOnly}; raises L{PCPDecodeError} for anything else."""
    if len(data) >= 2 and data[0] == NATPMP_VERSION and data[1] & RESPONSE:
        return NATPMPOnly()
    if not MAP_SIZE <= len(data) <= MAX_SIZE or len(data) % 4:
        raise PCPDecodeError(f"a PCP MAP response is 60 to 1100 bytes in 4s, not {len(data)}")
    version, opcode, _, result, lifetime, epoch = _RESPONSE_HEAD.unpack_from(data)
    if version != VERSION:
        raise PCPDecodeError(f"PCP version {version}")
    if opcode != RESPONSE | OPCODE_MAP:
        raise PCPDecodeError(f"not a MAP response: opcode {opcode:#x}")
    nonce, protocol, internal, external_port, external = _MAP_BODY.unpack_from(data, 24)
    return MapResponse(
        result, lifetime, epoch, nonce, protocol, internal, (_unmapped(external), external_port)
    )
