"""
STUN attributes as immutable values, each knowing how to encode and decode
its own value field, by family; and the L{AttributeTable}s that tell the
message decoder which types it knows (L{STUN_ATTRIBUTES} for plain STUN).
"""

from twisted_nat.stun.attributes.address import (
    AddressAttribute,
    AlternateServer,
    ChangedAddress,
    MappedAddress,
    OtherAddress,
    ResponseOrigin,
    SourceAddress,
    XorAddressAttribute,
    XorMappedAddress,
    pack_address,
    pack_xor_address,
    unpack_address,
    unpack_xor_address,
)
from twisted_nat.stun.attributes.base import (
    FAMILY_IPV4,
    FAMILY_IPV6,
    MAGIC_COOKIE,
    MAGIC_COOKIE_BYTES,
    Attribute,
    EmptyAttribute,
    FixedIntegerAttribute,
    UnknownAttribute,
    is_comprehension_required,
)
from twisted_nat.stun.attributes.error import ERROR_REASONS, ErrorCode, UnknownAttributes
from twisted_nat.stun.attributes.ice import IceControlled, IceControlling, Priority, UseCandidate
from twisted_nat.stun.attributes.integrity import (
    PASSWORD_ALGORITHM_MD5,
    PASSWORD_ALGORITHM_SHA256,
    Fingerprint,
    MessageIntegrity,
    MessageIntegritySHA256,
    PasswordAlgorithm,
    PasswordAlgorithms,
)
from twisted_nat.stun.attributes.registry import STUN_ATTRIBUTES, AttributeTable, Decoder
from twisted_nat.stun.attributes.rfc5780 import ChangeRequest, Padding, ResponsePort
from twisted_nat.stun.attributes.text import (
    AlternateDomain,
    Nonce,
    OpaqueAttribute,
    Realm,
    Software,
    TextAttribute,
    UserHash,
    Username,
)

__all__ = [
    "ERROR_REASONS",
    "FAMILY_IPV4",
    "FAMILY_IPV6",
    "MAGIC_COOKIE",
    "MAGIC_COOKIE_BYTES",
    "PASSWORD_ALGORITHM_MD5",
    "PASSWORD_ALGORITHM_SHA256",
    "STUN_ATTRIBUTES",
    "AddressAttribute",
    "AlternateDomain",
    "AlternateServer",
    "Attribute",
    "AttributeTable",
    "ChangeRequest",
    "ChangedAddress",
    "Decoder",
    "EmptyAttribute",
    "ErrorCode",
    "Fingerprint",
    "FixedIntegerAttribute",
    "IceControlled",
    "IceControlling",
    "MappedAddress",
    "MessageIntegrity",
    "MessageIntegritySHA256",
    "Nonce",
    "OpaqueAttribute",
    "OtherAddress",
    "Padding",
    "PasswordAlgorithm",
    "PasswordAlgorithms",
    "Priority",
    "Realm",
    "ResponseOrigin",
    "ResponsePort",
    "Software",
    "SourceAddress",
    "TextAttribute",
    "UnknownAttribute",
    "UnknownAttributes",
    "UseCandidate",
    "UserHash",
    "Username",
    "XorAddressAttribute",
    "XorMappedAddress",
    "is_comprehension_required",
    "pack_address",
    "pack_xor_address",
    "unpack_address",
    "unpack_xor_address",
]
