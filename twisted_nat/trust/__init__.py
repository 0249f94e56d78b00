"""
Who a peer is: its long-term key (L{PeerKey}, L{Identity}), the names bound
to keys, the keys we have pinned, and the signed key agreement of each
session.  docs/security.md describes the construction and the threats.
"""

from twisted_nat.trust.keyfile import create_identity, load_identity, load_or_create_identity
from twisted_nat.trust.keys import KEY_PREFIX, Identity, PeerKey
from twisted_nat.trust.known import Accept, KnownPeers
from twisted_nat.trust.names import normalise_name
from twisted_nat.trust.target import Target

__all__ = [
    "KEY_PREFIX",
    "Accept",
    "Identity",
    "KnownPeers",
    "PeerKey",
    "Target",
    "create_identity",
    "load_identity",
    "load_or_create_identity",
    "normalise_name",
]
