"""
twisted-nat: NAT traversal for Twisted.

STUN discovery of public addresses, NAT behaviour discovery, UDP hole
punching, keep-alive and TURN relaying, all sharing one UDP socket.
"""

__version__ = "0.1.0"
