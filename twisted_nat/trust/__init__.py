"""
Who a peer is: its long-term key (L{PeerKey}, L{Identity}), the names bound
to keys, the keys we have pinned, and the signed key agreement of each
session.  docs/security.md describes the construction and the threats.
"""

from twisted_nat.trust.keys import KEY_PREFIX, Identity, PeerKey

__all__ = ["KEY_PREFIX", "Identity", "PeerKey"]
