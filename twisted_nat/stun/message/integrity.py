"""
Message integrity: the HMAC every signed message is computed and checked
with, and the check of a decoded message's integrity attribute.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable

from twisted_nat.errors import IntegrityError
from twisted_nat.stun.message.value import HEADER_LENGTH, Message

_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))
_HMAC_BLOCK = 64  # SHA-1 and SHA-256 both hash 64-byte blocks
_ATTR_HEAD = struct.Struct("!HH")
_set_length = struct.Struct("!H").pack_into


class HMACStates(dict[bytes, tuple["hashlib._Hash", "hashlib._Hash"]]):
    """
    One hash function, and the hash states after the padded key blocks for
    the keys it was last used with (up to L{LIMIT}, then flushed): with
    them, a message costs L{keyed_hmac} two hash copies and two short
    updates.  An agent uses a handful of keys at a time; the states give
    away nothing the key does not, though they keep it alive until flushed.
    """

    __slots__ = ("digest",)
    LIMIT = 64

    def __init__(self, digest: Callable[[bytes], hashlib._Hash]) -> None:
        super().__init__()
        self.digest = digest


SHA1 = HMACStates(hashlib.sha1)
SHA256 = HMACStates(hashlib.sha256)


def keyed_hmac(key: bytes, data: bytes | bytearray, states: HMACStates) -> bytes:
    """
    HMAC (RFC 2104) of C{data} under C{key}, with the hash of C{states}
    (L{SHA1} or L{SHA256}).

    This is the construction the C{hmac} module falls back to, written out
    with cached keyed states because every message sent or checked pays for
    it and C{hmac.digest} sets up the MAC anew on every call.  The tests
    hold it to C{hmac.digest}; comparisons still go through
    C{hmac.compare_digest}.
    """
    if type(key) is not bytes:
        key = bytes(key)
    keyed = states.get(key)
    if keyed is None:
        digest = states.digest
        block = digest(key).digest() if len(key) > _HMAC_BLOCK else key
        block = block.ljust(_HMAC_BLOCK, b"\x00")
        keyed = (digest(block.translate(_IPAD)), digest(block.translate(_OPAD)))
        if len(states) >= HMACStates.LIMIT:
            states.clear()
        states[key] = keyed
    inner = keyed[0].copy()
    inner.update(data)
    outer = keyed[1].copy()
    outer.update(inner.digest())
    return outer.digest()


def check_integrity(message: Message, key: bytes) -> bool:
    """
    Whether C{message}, as decoded, carries a valid integrity attribute
    under C{key}.  MESSAGE-INTEGRITY-SHA256 is preferred when both are
    present (RFC 8489 14.6); comparison is in constant time.

    The HMAC covers the message up to the attribute, with the header's
    length field rewritten to end just after it.
    """
    mi_offset, mi256_offset = message.integrity_offsets
    raw = message.raw
    if mi256_offset >= 0:
        offset, states = mi256_offset, SHA256
        size = _ATTR_HEAD.unpack_from(raw, offset)[1]
        if not 16 <= size <= 32 or size & 3:
            return False
    elif mi_offset >= 0:
        offset, states, size = mi_offset, SHA1, 20
    else:
        return False
    covered = bytearray(raw[:offset])
    _set_length(covered, 2, offset - HEADER_LENGTH + 4 + size)
    start = offset + 4
    return hmac.compare_digest(keyed_hmac(key, covered, states)[:size], raw[start : start + size])


def verify_integrity(message: Message, key: bytes) -> None:
    """
    @raise IntegrityError: C{message} has no integrity attribute, or it does
        not verify under C{key}.
    """
    if not check_integrity(message, key):
        if message.integrity_offsets == (-1, -1):
            raise IntegrityError("message carries no MESSAGE-INTEGRITY")
        raise IntegrityError("MESSAGE-INTEGRITY does not verify")
