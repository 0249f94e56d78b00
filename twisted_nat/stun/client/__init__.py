"""
The STUN client: requests as transactions on a UDP socket, and discovery of
the public address against several servers.
"""

from twisted_nat.stun.client.discovery import DiscoveryResult
from twisted_nat.stun.client.protocol import (
    DEFAULT_STUN_PORT,
    SOFTWARE,
    ClientStats,
    STUNClient,
)
from twisted_nat.stun.client.resolution import Resolver
from twisted_nat.stun.client.transaction import Response, RetransmissionSchedule

__all__ = [
    "DEFAULT_STUN_PORT",
    "SOFTWARE",
    "ClientStats",
    "DiscoveryResult",
    "Resolver",
    "Response",
    "RetransmissionSchedule",
    "STUNClient",
]
