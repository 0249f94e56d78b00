"""
QUIC to one peer: the streams of one L{PeerConnection}.

A L{QuicLink} belongs to one peer connection.  The peer that offered the
connection is the QUIC client and the one that answered the server, so
two peers never open at once.  The client connects when the application
first opens a stream; the server makes its connection only from a large
enough Initial packet arriving on the peer connection's own path (so a
stranger, who has no connection with us, makes us allocate nothing).

Both peers show a certificate on their long-term key and ask for the
other's (mutual TLS); once the handshake is done each checks the key it
saw against the peer connection's proven key, and refuses any other with
L{KeyMismatch}, on every attempt.  Only then are streams opened or
accepted.  Datagrams leave on whatever path the peer connection has now;
when that path changes, congestion control and the RTT estimate start
again from the new path's round trip.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress

from aioquic.quic import events
from aioquic.quic.packet import QuicErrorCode
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import MessageLengthError
from twisted.internet.interfaces import IProtocol, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted_nat.connection import ConnectionClosed, PeerConnection
from twisted_nat.errors import (
    ConfigurationError,
    KeyMismatch,
    PathLost,
    PeerClosedStreams,
    StreamError,
    StreamIdleTimeout,
    StreamReset,
    StreamsClosed,
)
from twisted_nat.limits import DropLog
from twisted_nat.streams import _aioquic
from twisted_nat.streams.certificates import key_of
from twisted_nat.streams.driver import QuicDriver, QuicStats, initial_destination
from twisted_nat.streams.pmtu import PathSizer, unfragmented
from twisted_nat.streams.settings import StreamSettings, quic_configuration
from twisted_nat.streams.stream import PeerAddress, StreamTransport
from twisted_nat.streams.watch import PathWatch
from twisted_nat.trust.keys import Identity

Accept = Callable[[PeerAddress], IProtocol | None]
"""Makes the protocol of a stream the peer opened, or None to refuse it."""

DATAGRAM_OVERHEAD = 64
"""Bytes of a QUIC packet that are not a DATAGRAM frame's payload, with room to spare."""

_BAD_CERTIFICATE = QuicErrorCode.CRYPTO_ERROR + 42  # TLS alert bad_certificate (RFC 9001 4.8)


class QuicLink:
    """The QUIC connection (made when needed, again after one ends) to one peer."""

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        connection: PeerConnection,
        identity: Identity,
        client: bool,
        settings: StreamSettings,
        accept: Accept | None,
        stats: QuicStats,
        drops: DropLog,
    ) -> None:
        self.connection = connection
        self.client = client
        self.settings = settings
        self._reactor = reactor
        self._identity = identity
        self._accept = accept
        self._stats = stats
        self._drops = drops
        self.driver: QuicDriver | None = None
        self.ready = False
        self.closed = False
        self.streams: dict[int, StreamTransport] = {}
        self._waiting: list[Deferred[None]] = []
        self._last_incoming = -1
        connection.streams = self
        connection.on_path_change(self._path_changed)
        connection.when_closed().addCallback(lambda _: self.close())
        self._watch = PathWatch(reactor, connection, settings.path_lost_timeout, self._path_lost)
        self._sizer = PathSizer(
            reactor,
            settings.max_datagram_size,
            settings.probe_sizes,
            self._send,
            lambda: unfragmented(connection),
        )

    # --- the QUIC connection ---

    def _start(self, initial: bytes | None) -> QuicDriver:
        configuration = quic_configuration(self._identity, self.client, self.settings)
        quic = _aioquic.MutualQuicConnection(
            configuration=configuration, original_destination_connection_id=initial
        )
        driver = QuicDriver(
            self._reactor, quic, self._send_all, self._event, self._stats, self._drops
        )
        driver.on_timer = lambda: self._sizer.check(driver)
        self.driver, self.ready, self._last_incoming = driver, False, -1
        return driver

    def _send(self, datagram: bytes) -> None:
        connection = self.connection
        if connection.closed:
            return
        # A base that is gone loses the datagram, as the network may.
        with suppress(ConnectionClosed):
            connection.router.send(datagram, connection.remote_address, connection.base)
        self._watch.sent()

    def _send_all(self, datagrams: list[bytes]) -> None:
        """
        The datagrams of one pass of the driver: the path is looked up once
        for all of them (nothing can change it while they are handed over).
        """
        connection = self.connection
        if connection.closed:
            return
        send, to, base = connection.router.send, connection.remote_address, connection.base
        # A base that is gone loses the datagrams, as the network may.
        with suppress(ConnectionClosed):
            for datagram in datagrams:
                send(datagram, to, base)
        self._watch.sent()

    def datagram_received(self, datagram: bytes) -> None:
        """A QUIC datagram from the peer connection's path."""
        if self.closed:
            self._stats.dropped_unexpected += 1
            return
        driver = self.driver
        if driver is None:
            initial = None if self.client else initial_destination(datagram, 8)
            if initial is None:
                self._stats.dropped_unexpected += 1
                self.log.debug("dropped a QUIC datagram from {peer}: no connection", peer=self.peer)
                return
            driver = self._start(initial)
        if driver.datagram_received(datagram):
            self._watch.heard()
        for stream in list(self.streams.values()):
            stream.check_flow()

    def _path_changed(self, connection: PeerConnection) -> None:
        driver = self.driver
        if driver is None or self.closed:
            return
        self._sizer.restart(driver)
        _aioquic.reset_path(driver.quic, connection.rtt)
        driver.transmit()

    def _path_lost(self, seconds: float) -> None:
        if self.driver is None or self.closed:
            return
        self.log.info(
            "no path to {peer} for {seconds:.0f} s: its streams fail",
            peer=self.peer,
            seconds=seconds,
        )
        reason = PathLost(
            f"the path to {self.peer} was lost and not found again in {seconds:.0f} s"
        )
        self._end(Failure(reason), QuicErrorCode.NO_ERROR)

    @property
    def peer(self) -> str:
        return self.connection.peer or str(self.connection.peer_key)

    # --- events ---

    def _event(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.HandshakeCompleted):
            self._handshake_done()
        elif isinstance(event, events.StreamDataReceived):
            self._stream_data(event.stream_id, event.data, event.end_stream)
        elif isinstance(event, events.StreamReset):
            self._stream_failed(event.stream_id, "the peer reset the stream", event.error_code)
        elif isinstance(event, events.StopSendingReceived):
            self._stream_failed(event.stream_id, "the peer stopped reading", event.error_code)
        elif isinstance(event, events.DatagramFrameReceived):
            self._datagram(event.data)
        elif isinstance(event, events.ConnectionTerminated):
            self._terminated(event)

    def _handshake_done(self) -> None:
        assert self.driver is not None
        expected = self.connection.peer_key
        shown = key_of(_aioquic.peer_certificate(self.driver.quic))
        if expected is None or shown != expected:
            self._stats.key_mismatches += 1
            self.log.warn(
                "{peer} showed key {shown} over QUIC, not {expected}: refused",
                peer=self.peer,
                shown=shown.short if shown is not None else "none",
                expected=expected.short if expected is not None else "none",
            )
            self._end(
                Failure(KeyMismatch(f"{self.peer} showed another key over QUIC")),
                _BAD_CERTIFICATE,
            )
            return
        self.ready = True
        self.log.debug("QUIC to {peer} is up", peer=self.peer)
        self._sizer.start(self.driver)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(None)

    def _stream_data(self, stream_id: int, data: bytes, end: bool) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            ours = bool(stream_id & 1) != self.client
            if ours or stream_id <= self._last_incoming:
                return  # late data of a stream we closed
            self._last_incoming = stream_id
            stream = self._incoming(stream_id)
            if stream is None:
                return
        stream.data_received(data, end)

    def _incoming(self, stream_id: int) -> StreamTransport | None:
        """A stream the peer opened: to the application's protocol, or refused."""
        unidirectional = bool(stream_id & 2)
        protocol = None
        if self.ready and not unidirectional and self._accept is not None:
            protocol = self._accept(self._address(stream_id))
        if protocol is None:
            self._stats.streams_refused += 1
            self.log.debug("refused stream {id} from {peer}", id=stream_id, peer=self.peer)
            self._quietly(stream_id, stop=True, reset=not unidirectional)
            return None
        return self._attach(stream_id, protocol)

    def _quietly(
        self,
        stream_id: int,
        data: bytes = b"",
        end: bool = False,
        stop: bool = False,
        reset: bool = False,
    ) -> None:
        """
        Write to, stop or reset a stream; aioquic refuses what a stream's
        state no longer allows (a write after the peer's STOP_SENDING), and
        that is no error of the application's.
        """
        if self.driver is None:
            return
        quic = self.driver.quic
        try:
            if data or end:
                quic.send_stream_data(stream_id, data, end_stream=end)
            if reset:
                quic.reset_stream(stream_id, QuicErrorCode.NO_ERROR)
            if stop:
                quic.stop_stream(stream_id, QuicErrorCode.NO_ERROR)
        except (ValueError, RuntimeError) as e:
            self.log.debug("stream {id}: {error}", id=stream_id, error=e)
        self.driver.transmit()

    def _address(self, stream_id: int) -> PeerAddress:
        return PeerAddress(self.connection.peer, self.connection.peer_key, stream_id)

    def _attach(self, stream_id: int, protocol: IProtocol) -> StreamTransport:
        host = PeerAddress(None, self._identity.public, stream_id)
        stream = StreamTransport(
            self,
            stream_id,
            protocol,
            host,
            self._address(stream_id),
            self.settings.high_water,
            self.settings.low_water,
        )
        self.streams[stream_id] = stream
        protocol.makeConnection(stream)
        return stream

    def _stream_failed(self, stream_id: int, what: str, code: int) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.connection_lost(Failure(StreamReset(f"{what} (code {code})", code)))

    def _terminated(self, event: events.ConnectionTerminated) -> None:
        if event.reason_phrase == "Idle timeout":
            error: Exception = StreamIdleTimeout(
                f"nothing came from {self.peer} for {self.settings.idle_timeout:.0f} s"
            )
        elif event.error_code == _BAD_CERTIFICATE:
            error = KeyMismatch(f"{self.peer} refused the key we showed over QUIC")
        else:
            error = PeerClosedStreams(
                f"{self.peer} closed QUIC (code {event.error_code}: {event.reason_phrase})"
            )
        self._end(Failure(error), None)

    def _end(self, reason: Failure, code: int | None) -> None:
        """The QUIC connection is over: its streams and waiters fail with C{reason}."""
        driver, self.driver, self.ready = self.driver, None, False
        self._sizer.stop()
        if driver is not None:
            if code is not None:
                driver.quic.close(error_code=code, reason_phrase=str(reason.value))
                driver.transmit()
            driver.stop()
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.connection_lost(reason)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(reason)

    # --- what the application does ---

    def open_stream(self, protocol: IProtocol) -> Deferred[IProtocol]:
        """
        A new stream to the peer, with C{protocol} connected to it; the
        peer sees it once something is written on it.
        """
        if self.closed or self.connection.closed:
            return fail(StreamsClosed(f"the connection to {self.peer} is closed"))
        d = self._when_ready()
        return d.addCallback(lambda _: self._open(protocol))

    def connect(self) -> None:
        """Make the QUIC connection now, if we are its client and have none."""
        if self.driver is None and self.client and not self.closed:
            self._start(None).connect()

    def _when_ready(self) -> Deferred[None]:
        if self.ready:
            return succeed(None)
        self.connect()
        d: Deferred[None] = Deferred()
        self._waiting.append(d)
        return d

    def _open(self, protocol: IProtocol) -> IProtocol:
        if self.driver is None:
            raise StreamsClosed(f"QUIC to {self.peer} ended")
        stream_id = self.driver.quic.get_next_available_stream_id()
        self._attach(stream_id, protocol)
        return protocol

    def send_datagram(self, data: bytes) -> None:
        """
        Send one unreliable QUIC DATAGRAM frame (RFC 9221) to the peer: like
        the connection's own datagrams, lost if the path loses it, but in
        QUIC's congestion control.  The peer's connection protocol gets it
        in C{datagramReceived}.

        @raise ConfigurationError: C{StreamSettings.datagrams} is off.
        @raise StreamError: QUIC is not up, or the peer takes no datagrams.
        @raise MessageLengthError: C{data} does not fit in one packet.
        """
        if not self.settings.datagrams:
            raise ConfigurationError("QUIC datagrams are off (StreamSettings.datagrams)")
        driver = self.driver
        if driver is None or not self.ready:
            raise StreamError(f"QUIC to {self.peer} is not up")
        limit = min(
            self.settings.max_datagram_size - DATAGRAM_OVERHEAD,
            _aioquic.peer_datagram_limit(driver.quic),
        )
        if limit <= 0:
            raise StreamError(f"{self.peer} takes no QUIC datagrams")
        if len(data) > limit:
            raise MessageLengthError(f"a QUIC datagram to {self.peer} holds {limit} bytes at most")
        driver.quic.send_datagram_frame(bytes(data))
        driver.transmit()

    def _datagram(self, data: bytes) -> None:
        if not self.ready or not self.settings.datagrams:
            self._stats.dropped_unexpected += 1
            return
        self._stats.datagrams_received += 1
        protocol = self.connection.protocol
        if protocol is not None:
            protocol.datagramReceived(data, self.connection.remote_address)

    def close(self) -> None:
        """Close QUIC to the peer (the peer connection closed, or the service stops)."""
        if self.closed:
            return
        self.closed = True
        self._watch.stop()
        self._end(
            Failure(StreamsClosed(f"the connection to {self.peer} closed")),
            QuicErrorCode.NO_ERROR,
        )

    # --- StreamOwner ---

    def stream_write(self, stream_id: int, data: bytes, end: bool) -> None:
        self._quietly(stream_id, data, end)

    def stream_abort(self, stream_id: int) -> None:
        self._quietly(stream_id, stop=True, reset=True)

    def stream_stop_reading(self, stream_id: int) -> None:
        self._quietly(stream_id, stop=True)

    def stream_unacknowledged(self, stream_id: int) -> int:
        if self.driver is None:
            return 0
        return _aioquic.unacknowledged(self.driver.quic, stream_id)

    def stream_done(self, stream_id: int) -> None:
        self.streams.pop(stream_id, None)
