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
 - start congestion control and the RTT estimate afresh on a new path
   (L{reset_path}), as RFC 9000 section 9.4 asks of a migration;
 - know whether, and how large, DATAGRAM frames the peer takes
   (L{peer_datagram_limit});
 - tell whether a datagram authenticated (L{idle_deadline} moves).
"""

from __future__ import annotations

import math
from typing import Any

from aioquic.quic.congestion.base import create_congestion_control
from aioquic.quic.connection import QuicConnection
from aioquic.quic.recovery import QuicPacketPacer
from cryptography import x509


class MutualQuicConnection(QuicConnection):
    """A QUIC connection whose server side asks the client for a certificate (mutual TLS)."""

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
    loss._pacer = QuicPacketPacer(max_datagram_size=size)
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
