"""
The few places where we reach inside aioquic, all here.

aioquic has no public way to do these things we need, so each is a small
function over its internals, pinned by the version range in the package's
dependencies and held by the tests (each fails if aioquic changes under
it):

 - ask the client for its certificate: a server asks only when a private
   flag of its TLS context is set (L{MutualQuicConnection});
 - read the certificate the peer showed (L{peer_certificate});
 - see how much of a stream's data waits for an acknowledgement
   (L{unacknowledged}), for flow control towards the application;
 - pace for a reactor's coarse timers (L{CoarsePacer});
 - acknowledge at once, and tell the peer so (L{MAX_ACK_DELAY}): aioquic
   holds every acknowledgement for a millisecond and announces 25;
 - start congestion control and the RTT estimate afresh on a new path
   (L{reset_path}), as RFC 9000 section 9.4 asks of a migration;
 - know whether, and how large, DATAGRAM frames the peer takes
   (L{peer_datagram_limit});
 - tell whether a datagram authenticated (L{idle_deadline} moves);
 - send a padded probe of a given size and learn its fate, and raise the
   datagram size once one is acknowledged (L{send_size_probe},
   L{set_datagram_size}): aioquic has no path MTU discovery.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.quic.congestion.base import create_congestion_control
from aioquic.quic.connection import END_STATES, QuicConnection
from aioquic.quic.packet import (
    QuicFrameType,
    QuicPacketType,
    pull_quic_transport_parameters,
    push_quic_transport_parameters,
)
from aioquic.quic.packet_builder import QuicDeliveryState, QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketPacer
from cryptography import x509

TIMER_GRANULARITY = 0.001
"""Seconds a reactor's timer may fire late: epoll sleeps in whole milliseconds."""

MAX_ACK_DELAY = 2
"""
Milliseconds we tell the peer we may hold an acknowledgement (RFC 9000
section 18.2, C{max_ack_delay}): we hold none on purpose (the driver
answers what one reactor turn read in one pass), so this is the timer's
granularity twice over.  The peer's probe timeout (RFC 9002 section
6.2.1) counts it in, so it is what a tail loss costs beyond the round
trip (aioquic announces 25).
"""


class CoarsePacer(QuicPacketPacer):
    """
    aioquic's pacer, for timers that fire up to L{TIMER_GRANULARITY} late:
    its bucket holds at least two granules' worth of packets at the pacing
    rate (aioquic's holds at most 16 packets), so that a wakeup that came
    late sends what the rate allowed meanwhile, rather than the rate being
    capped at a bucket per millisecond.  Bursts stay within the congestion
    window.
    """

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        super().update_rate(congestion_window, smoothed_rtt)
        self.bucket_max = max(self.bucket_max, 2 * TIMER_GRANULARITY)


class MutualQuicConnection(QuicConnection):
    """
    A QUIC connection whose server side asks the client for a certificate
    (mutual TLS), paced by L{CoarsePacer}, that acknowledges what it
    received in the same pass of the driver (L{MAX_ACK_DELAY}).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loss._pacer = CoarsePacer(max_datagram_size=self._max_datagram_size)
        self._ack_delay = 0.0

    def _serialize_transport_parameters(self) -> bytes:
        parameters = pull_quic_transport_parameters(
            Buffer(data=super()._serialize_transport_parameters())
        )
        parameters.max_ack_delay = MAX_ACK_DELAY
        buf = Buffer(capacity=3 * self._max_datagram_size)
        push_quic_transport_parameters(buf, parameters)
        return buf.data

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        if not self._is_client:
            self.tls._request_client_certificate = True


def peer_certificate(connection: QuicConnection) -> x509.Certificate | None:
    """The certificate the peer showed in the handshake (its CertificateVerify checked)."""
    tls: Any = getattr(connection, "tls", None)
    certificate = getattr(tls, "_peer_certificate", None)
    return certificate if isinstance(certificate, x509.Certificate) else None


def unacknowledged(connection: QuicConnection, stream_id: int) -> int:
    """Bytes written to a stream that the peer has not acknowledged yet."""
    stream = connection._streams.get(stream_id)
    if stream is None:
        return 0
    return len(stream.sender._buffer)


def reset_path(connection: QuicConnection, rtt: float | None) -> None:
    """
    Congestion control and the RTT estimate start again, as on a new path:
    the congestion window falls to the initial window and the RTT is
    relearnt, starting from C{rtt} (the new path's, measured by the punch
    or keep-alive) when known.  Packets in flight stay counted.
    """
    loss = connection._loss
    size = connection._max_datagram_size
    controller = create_congestion_control(
        connection.configuration.congestion_control_algorithm, max_datagram_size=size
    )
    controller.bytes_in_flight = loss._cc.bytes_in_flight
    loss._cc = controller
    loss._pacer = CoarsePacer(max_datagram_size=size)
    if rtt is not None and rtt > 0:
        loss._rtt_initial = rtt
    loss._rtt_initialized = False
    loss._rtt_latest = 0.0
    loss._rtt_min = math.inf
    loss._rtt_smoothed = 0.0
    loss._rtt_variance = 0.0
    loss._pto_count = 0


def congestion_window(connection: QuicConnection) -> int:
    """The congestion window now, in bytes."""
    return int(connection._loss.congestion_window)


def peer_datagram_limit(connection: QuicConnection) -> int:
    """The largest DATAGRAM frame payload the peer said it takes; 0 if none (RFC 9221)."""
    limit = connection._remote_max_datagram_frame_size
    return 0 if limit is None else int(limit)


def idle_deadline(connection: QuicConnection) -> float | None:
    """
    When the connection would end idle: moved on by every packet that
    authenticates (and by a send), so a datagram that moved it was the peer's.
    """
    return connection._close_at


def send_size_probe(
    connection: QuicConnection, size: int, now: float, done: Callable[[int, bool], object]
) -> bytes | None:
    """
    A datagram of exactly C{size} bytes, one 1-RTT packet of a PING and
    padding, for path MTU discovery (RFC 8899 with QUIC, RFC 9000 section
    14.4): C{done(size, acked)} is called once the peer acknowledges it,
    or once QUIC's loss detection finds it lost.  It counts in no
    congestion window, and its loss is no congestion signal.  None before
    the handshake has 1-RTT keys.
    """
    crypto = connection._cryptos[tls.Epoch.ONE_RTT]
    version = connection._version
    if not crypto.send.is_valid() or connection._state in END_STATES or version is None:
        return None
    builder = QuicPacketBuilder(
        host_cid=connection.host_cid,
        is_client=connection._is_client,
        max_datagram_size=size,
        packet_number=connection._packet_number,
        peer_cid=connection._peer_cid.cid,
        peer_token=connection._peer_token,
        quic_logger=None,
        spin_bit=connection._spin_bit,
        version=version,
    )

    def delivered(state: QuicDeliveryState) -> None:
        done(size, state == QuicDeliveryState.ACKED)

    builder.start_packet(QuicPacketType.ONE_RTT, crypto)
    builder.start_frame(QuicFrameType.PING, capacity=1, handler=delivered)
    builder._datagram_needs_padding = True
    datagrams, packets = builder.flush()
    if len(datagrams) != 1 or len(datagrams[0]) != size:
        return None
    connection._packet_number = builder.packet_number
    for packet in packets:
        packet.sent_time = now
        packet.in_flight = False
        connection._loss.on_packet_sent(packet=packet, space=connection._spaces[packet.epoch])
    return datagrams[0]


def datagram_size(connection: QuicConnection) -> int:
    """The largest datagram the connection sends now."""
    return int(connection._max_datagram_size)


def set_datagram_size(connection: QuicConnection, size: int) -> None:
    """Send datagrams of up to C{size} bytes from now on, congestion control counting in them."""
    connection._max_datagram_size = size
    loss = connection._loss
    controller: Any = loss._cc
    controller._max_datagram_size = size
    loss._pacer._max_datagram_size = size


def probes_unanswered(connection: QuicConnection) -> int:
    """Probe timeouts in a row without an acknowledgement (RFC 9002 section 6.2)."""
    return int(connection._loss._pto_count)
