"""
A peer is its key: L{PeerKey}, the public half others know us by, and
L{Identity}, the private half that signs for us.

A public key has one printable form, used in logs, status JSON, command
lines and errors alike:

    tn-<56 base32 letters>

The letters encode the 32-byte Ed25519 key and a 3-byte checksum, so a
mistyped or truncated key is refused with L{BadKey} instead of naming
some other peer (one typo in 16 million gets through).
"""

from __future__ import annotations

import base64
import hashlib

import attrs
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from twisted_nat.errors import BadKey

KEY_PREFIX = "tn-"
KEY_SIZE = 32
SIGNATURE_SIZE = 64
_CHECKSUM_SIZE = 3
_TEXT_LENGTH = len(KEY_PREFIX) + 56


def _checksum(raw: bytes) -> bytes:
    return hashlib.sha256(b"twisted-nat peer key\x00" + raw).digest()[:_CHECKSUM_SIZE]


def _check_raw(instance: object, attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if type(value) is not bytes or len(value) != KEY_SIZE:
        raise BadKey(f"a peer key is {KEY_SIZE} bytes")


@attrs.frozen(repr=False)
class PeerKey:
    """
    A peer's long-term Ed25519 public key: who the peer is.

    @ivar raw: the 32 bytes of the key (RFC 8032 encoding).
    """

    raw: bytes = attrs.field(validator=_check_raw)

    @classmethod
    def parse(cls, text: str) -> PeerKey:
        """The key printed as C{text} (any case); L{BadKey} if it is not one."""
        if not isinstance(text, str):
            raise BadKey(f"a peer key is text, not {type(text).__name__}")
        shown = text if len(text) <= 80 else text[:77] + "..."
        if not text.lower().startswith(KEY_PREFIX):
            raise BadKey(f"{shown!r} is not a peer key: it must start with {KEY_PREFIX!r}")
        if len(text) != _TEXT_LENGTH:
            raise BadKey(
                f"{shown!r} is not a peer key: it has {len(text)} characters, not {_TEXT_LENGTH}"
            )
        try:
            decoded = base64.b32decode(text[len(KEY_PREFIX) :].upper())
        except ValueError:
            raise BadKey(f"{shown!r} is not a peer key: not base32") from None
        raw, checksum = decoded[:KEY_SIZE], decoded[KEY_SIZE:]
        if _checksum(raw) != checksum:
            raise BadKey(f"{shown!r} is not a peer key: its checksum is wrong (a typo?)")
        return cls(raw)

    @property
    def text(self) -> str:
        """The printable form."""
        encoded = base64.b32encode(self.raw + _checksum(self.raw)).decode("ascii")
        return KEY_PREFIX + encoded.lower()

    @property
    def short(self) -> str:
        """The first letters of the printable form, enough to tell keys apart in a log line."""
        return self.text[:15]

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether C{signature} is this key's over C{data}."""
        if type(signature) is not bytes or len(signature) != SIGNATURE_SIZE:
            return False
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"PeerKey({self.text!r})"


class Identity:
    """
    Our long-term Ed25519 key pair.  The private key never leaves this
    object except through L{private_bytes}, for saving it.
    """

    __slots__ = ("_private", "public")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = PeerKey(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    @classmethod
    def generate(cls) -> Identity:
        """A fresh key pair."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def private_key(self) -> Ed25519PrivateKey:
        return self._private

    def sign(self, data: bytes) -> bytes:
        """Our 64-byte signature over C{data}."""
        return self._private.sign(data)

    def __repr__(self) -> str:
        return f"Identity({self.public.text!r})"
