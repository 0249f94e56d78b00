"""
TURN (RFC 8656): relayed addresses for when hole punching cannot work.

A L{TURNClient} sits on the shared socket's multiplexer (or on a TCP or TLS
stream, L{connect_stream}) and makes L{Allocation}s: a relayed address on a
TURN server, permissions for peers, channels, and the timers that keep them
alive.  L{parse_turn_uri} reads a server's RFC 7065 URI into a L{TURNServer}.
L{TURN_ATTRIBUTES} is the attribute table TURN messages are decoded with.
"""

from __future__ import annotations

from twisted_nat.turn.allocation import Allocation
from twisted_nat.turn.attributes import (
    TURN_ATTRIBUTES,
    ChannelNumber,
    Data,
    DontFragment,
    EvenPort,
    Lifetime,
    RequestedAddressFamily,
    RequestedTransport,
    ReservationToken,
    XorPeerAddress,
    XorRelayedAddress,
)
from twisted_nat.turn.bookkeeping import AllocationState
from twisted_nat.turn.channel import (
    CHANNEL_NUMBERS,
    ChannelData,
    StreamFramer,
    decode_channel_data,
    encode_channel_data,
)
from twisted_nat.turn.client import TURNClient
from twisted_nat.turn.credentials import Credentials
from twisted_nat.turn.relayed import RelayedTransport
from twisted_nat.turn.stats import TURNStats
from twisted_nat.turn.stream import TURNStreamProtocol, connect_stream
from twisted_nat.turn.transactions import TURN_METHODS, turn_error
from twisted_nat.turn.uri import TURNServer, parse_turn_uri

__all__ = [
    "CHANNEL_NUMBERS",
    "TURN_ATTRIBUTES",
    "TURN_METHODS",
    "Allocation",
    "AllocationState",
    "ChannelData",
    "ChannelNumber",
    "Credentials",
    "Data",
    "DontFragment",
    "EvenPort",
    "Lifetime",
    "RelayedTransport",
    "RequestedAddressFamily",
    "RequestedTransport",
    "ReservationToken",
    "StreamFramer",
    "TURNClient",
    "TURNServer",
    "TURNStats",
    "TURNStreamProtocol",
    "XorPeerAddress",
    "XorRelayedAddress",
    "connect_stream",
    "decode_channel_data",
    "encode_channel_data",
    "parse_turn_uri",
    "turn_error",
]
