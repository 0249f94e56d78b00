"""
The stock side of the stream benchmark: an aioquic client and server on
asyncio, in aioquic's own example style (a C{QuicConnectionProtocol} each,
C{serve} and C{connect}), configured like twisted-nat's default
C{StreamSettings}.  Nothing of twisted-nat is imported.

    python -m benchmarks.streams_aioquic server PORT
        serves on 127.0.0.1:PORT; prints {"event": "ready"}, then a
        {"event": "received", ...} line per stream received to its end
    python -m benchmarks.streams_aioquic client PORT MIB
        sends MIB MiB on one stream, ends it, waits for the server's
        one-byte reply, and prints {"event": "sent", ...}

Each process times its own part and measures its own CPU (user + system,
C{getrusage}) over it: the sender from the stream's first byte to the
reply, the receiver from the stream's first byte to its end.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import resource
import ssl
import sys
import time
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import QuicEvent, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

MIB = 1 << 20


def cpu() -> float:
    """User and system seconds this process has used."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def configuration(is_client: bool) -> QuicConfiguration:
    """twisted-nat's default stream settings, with a self-signed Ed25519 certificate."""
    key = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stock aioquic peer")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, algorithm=None)
    )
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=["bench"],
        idle_timeout=60.0,
        max_datagram_size=1200,
        max_stream_data=1 << 20,
        max_data=1 << 22,
        congestion_control_algorithm="cubic",
        verify_mode=ssl.CERT_NONE,
    )
    config.certificate = certificate
    config.private_key = key
    return config


class Sink(QuicConnectionProtocol):
    """Counts a stream's bytes; at its end, answers one byte and reports."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.received: dict[int, int] = {}
        self.started: dict[int, tuple[float, float]] = {}

    def quic_event_received(self, event: QuicEvent) -> None:
        if not isinstance(event, StreamDataReceived):
            return
        stream = event.stream_id
        if stream not in self.started:
            self.started[stream] = (time.perf_counter(), cpu())
            self.received[stream] = 0
        self.received[stream] += len(event.data)
        if event.end_stream:
            self._quic.send_stream_data(stream, b"k", end_stream=True)
            self.transmit()
            wall, used = self.started[stream]
            emit(
                "received",
                bytes=self.received[stream],
                seconds=time.perf_counter() - wall,
                cpu=cpu() - used,
            )


class Source(QuicConnectionProtocol):
    """Waits for the server's one-byte reply to the stream it sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replied: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event: QuicEvent) -> None:
        done = isinstance(event, StreamDataReceived) and event.end_stream
        if done and not self.replied.done():
            self.replied.set_result(None)


async def run_server(port: int) -> None:
    await serve("127.0.0.1", port, configuration=configuration(False), create_protocol=Sink)
    emit("ready")
    await asyncio.Event().wait()


async def run_client(port: int, mib: int) -> None:
    payload = bytes(range(256)) * (mib * MIB // 256)
    async with connect(
        "127.0.0.1",
        port,
        configuration=configuration(True),
        create_protocol=Source,
        wait_connected=True,
    ) as connected:
        client: Any = connected
        wall, used = time.perf_counter(), cpu()
        stream = client._quic.get_next_available_stream_id()
        client._quic.send_stream_data(stream, payload, end_stream=True)
        client.transmit()
        await asyncio.wait_for(client.replied, 300)
        emit("sent", bytes=len(payload), seconds=time.perf_counter() - wall, cpu=cpu() - used)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(run_server(int(sys.argv[2])))
    else:
        asyncio.run(run_client(int(sys.argv[2]), int(sys.argv[3])))
