"""
The TLS certificate of a peer: its long-term Ed25519 key, self-signed.

A peer is its key (L{twisted_nat.trust.keys}), so the certificate it shows
in the QUIC handshake carries that very key, signed by itself; nobody's
authority is asked.  The other side checks the certificate's key against
the key it expects (L{key_of}): TLS 1.3's CertificateVerify has already
proved that the sender holds the private half.  This is RFC 7250's raw
public key, carried in an X.509 certificate because that is what TLS
stacks (aioquic among them) can send.

The certificate is the same every time for one key (Ed25519 signatures
are deterministic, and its dates and serial number derive from nothing
but the key), so no clock is read to make one.
"""

from __future__ import annotations

import datetime
import hashlib

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from twisted_nat.trust.keys import Identity, PeerKey

_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
# RFC 5280 section 4.1.2.5: 99991231235959Z means "no expiration date".
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)


def certificate_for(identity: Identity) -> x509.Certificate:
    """The self-signed certificate of C{identity}'s key."""
    key = identity.public
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, key.text)])
    serial = int.from_bytes(hashlib.sha256(b"twisted-nat certificate\x00" + key.raw).digest()[:16])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(identity.private_key.public_key())
        .serial_number(serial >> 1 or 1)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    )
    return builder.sign(identity.private_key, algorithm=None)


def key_of(certificate: x509.Certificate | None) -> PeerKey | None:
    """The peer key a certificate carries, or None if it carries no Ed25519 key."""
    if certificate is None:
        return None
    try:
        public = certificate.public_key()
    except ValueError:
        return None
    if not isinstance(public, Ed25519PublicKey):
        return None
    return PeerKey(public.public_bytes(Encoding.Raw, PublicFormat.Raw))
