"""
The service that composes NAT traversal for one application
(L{NATTraversalService}), its settings, and the parts it wires.
"""

from twisted_nat.service.events import IPeerEvents, PeerEventsBase
from twisted_nat.service.service import NATTraversalManager, NATTraversalService
from twisted_nat.service.settings import KeepAliveSettings, PeerSettings

__all__ = [
    "IPeerEvents",
    "KeepAliveSettings",
    "NATTraversalManager",
    "NATTraversalService",
    "PeerEventsBase",
    "PeerSettings",
]
