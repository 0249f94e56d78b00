"""
The STUN message (RFC 8489): the value, its wire codec and its integrity.

No I/O and no clock: L{encode} and L{decode} are plain functions so that the
client, the server, the hole puncher and the tests all share one tested
implementation.  L{decode} raises L{twisted_nat.errors.STUNDecodeError} and
nothing else, for any input.
"""

from twisted_nat.stun.message.codec import decode, encode, looks_like_stun
from twisted_nat.stun.message.integrity import check_integrity, verify_integrity
from twisted_nat.stun.message.value import (
    FINGERPRINT_XOR,
    HEADER_LENGTH,
    Message,
    MessageClass,
    Method,
    error_response,
    has_integrity,
    message_type,
    new_transaction_id,
    request,
    response_to,
    split_message_type,
    with_integrity,
)

__all__ = [
    "FINGERPRINT_XOR",
    "HEADER_LENGTH",
    "Message",
    "MessageClass",
    "Method",
    "check_integrity",
    "decode",
    "encode",
    "error_response",
    "has_integrity",
    "looks_like_stun",
    "message_type",
    "new_transaction_id",
    "request",
    "response_to",
    "split_message_type",
    "verify_integrity",
    "with_integrity",
]
