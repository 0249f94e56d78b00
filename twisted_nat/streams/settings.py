"""
How streams between peers are configured, and the QUIC configuration each
connection gets from that.
"""

from __future__ import annotations

import ssl

import attrs
from aioquic.quic.configuration import QuicConfiguration

from twisted_nat.errors import ConfigurationError
from twisted_nat.limits import positive
from twisted_nat.streams.certificates import certificate_for
from twisted_nat.trust.keys import Identity

ALPN = "twisted-nat/1"
"""The ALPN both peers name: a peer that speaks something else is refused by TLS."""


def _low_below_high(instance: StreamSettings, attribute: object, value: int) -> None:
    if not 0 <= value < instance.high_water:
        raise ConfigurationError("low_water must be at least 0 and below high_water")


def _ascending(instance: StreamSettings, attribute: object, value: tuple[int, ...]) -> None:
    if list(value) != sorted(set(value)) or any(size > 65527 for size in value):
        raise ConfigurationError("probe_sizes must be ascending UDP payload sizes")


@attrs.frozen
class StreamSettings:
    """
    @ivar idle_timeout: seconds without a packet from the peer after which
        the QUIC connection ends and its streams fail with
        L{twisted_nat.errors.StreamIdleTimeout}: long enough to outlast a
        lost path being punched again.
    @ivar path_lost_timeout: seconds the peer connection may spend
        reconnecting (its path lost, a new punch not yet through) before the
        QUIC connection ends and its streams fail with
        L{twisted_nat.errors.PathLost}: long enough for a punch again, or
        a move to a relay, short of the idle timeout.
    @ivar high_water: unacknowledged bytes of one stream above which its
        producer is paused.
    @ivar low_water: unacknowledged bytes below which a paused producer is
        resumed.
    @ivar max_datagram_size: the QUIC datagram size (UDP payload) sent
        until path MTU discovery confirms a larger one, and after a path
        change; 1200, QUIC's minimum, fits every path, relays included.
    @ivar probe_sizes: larger datagram sizes to probe the path for, in
        ascending order (path MTU discovery, L{twisted_nat.streams.pmtu}):
        1452 fits IPv6 and 1472 IPv4 over Ethernet's 1500-byte MTU.  Each
        is used only once the peer acknowledged a probe of it; empty: 1200
        (C{max_datagram_size}) always.
    @ivar max_stream_data: the receive window of one stream, in bytes.
    @ivar max_data: the receive window of the whole connection, in bytes.
    @ivar eager: the offerer (the QUIC client) connects as soon as the
        peer connection is made, if it takes streams (the service has a
        stream factory) or QUIC datagrams, so that either peer may open the
        first stream;
        otherwise at its first L{open_stream}, and an answerer's streams
        wait for that.  A connection without QUIC holds no QUIC state and
        spends no handshake.
    @ivar datagrams: accept and send QUIC DATAGRAM frames (RFC 9221).
    @ivar congestion_control: aioquic's algorithm, C{"reno"} or C{"cubic"}.
    """

    idle_timeout: float = attrs.field(default=60.0, validator=positive)
    path_lost_timeout: float = attrs.field(default=20.0, validator=positive)
    high_water: int = attrs.field(default=1 << 20, validator=positive)
    low_water: int = attrs.field(default=1 << 18, validator=_low_below_high)
    max_datagram_size: int = attrs.field(default=1200, validator=positive)
    probe_sizes: tuple[int, ...] = attrs.field(default=(1452, 1472), validator=_ascending)
    max_stream_data: int = attrs.field(default=1 << 20, validator=positive)
    max_data: int = attrs.field(default=1 << 22, validator=positive)
    eager: bool = True
    datagrams: bool = False
    congestion_control: str = "cubic"


DEFAULT_STREAM_SETTINGS = StreamSettings()


def quic_configuration(
    identity: Identity, is_client: bool, settings: StreamSettings = DEFAULT_STREAM_SETTINGS
) -> QuicConfiguration:
    """
    The configuration of one QUIC connection: our self-signed certificate
    on our long-term key, and no certificate authority (the peer's key is
    checked against the expected one once the handshake is done).
    """
    configuration = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        idle_timeout=settings.idle_timeout,
        max_datagram_size=settings.max_datagram_size,
        max_stream_data=settings.max_stream_data,
        max_data=settings.max_data,
        congestion_control_algorithm=settings.congestion_control,
        verify_mode=ssl.CERT_NONE,
        max_datagram_frame_size=65536 if settings.datagrams else None,
    )
    configuration.certificate = certificate_for(identity)
    configuration.private_key = identity.private_key
    return configuration
