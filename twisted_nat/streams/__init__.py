"""
Reliable, encrypted streams between peers: QUIC (aioquic) over the punched
path, authenticated by the peers' long-term keys.  docs/architecture.md
and docs/security.md describe the design.
"""

from twisted_nat.streams.link import QuicLink
from twisted_nat.streams.peers import PeerStreams, QuicRouter
from twisted_nat.streams.settings import DEFAULT_STREAM_SETTINGS, StreamSettings
from twisted_nat.streams.stream import PeerAddress, StreamTransport

__all__ = [
    "DEFAULT_STREAM_SETTINGS",
    "PeerAddress",
    "PeerStreams",
    "QuicLink",
    "QuicRouter",
    "StreamSettings",
    "StreamTransport",
]
