"""
A stock aioquic peer on asyncio, run as a child process by the interop
tests: nothing of twisted-nat is imported, only aioquic and cryptography.

    python aioquic_peer.py server KEYFILE PORT SECONDS
        serves on 127.0.0.1:PORT for SECONDS, echoing every stream
    python aioquic_peer.py client KEYFILE PORT LOCAL_PORT SIZE
        connects from LOCAL_PORT, sends SIZE bytes on a stream, reads the
        echo, and prints one JSON line: {"echoed": n, "sha256": ..., "error": code}

Each side shows a self-signed certificate on the Ed25519 key in KEYFILE
(PEM, PKCS#8) and checks no certificate itself (verify_mode CERT_NONE).
"""

import asyncio
import datetime
import hashlib
import json
import ssl
import sys
from typing import Any

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.asyncio.server import serve
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from cryptography.x509.oid import NameOID


def configuration(keyfile: str, is_client: bool) -> QuicConfiguration:
    with open(keyfile, "rb") as f:
        key: Any = load_pem_private_key(f.read(), password=None)
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
        is_client=is_client, alpn_protocols=["twisted-nat/1"], verify_mode=ssl.CERT_NONE
    )
    config.certificate = certificate
    config.private_key = key
    return config


class Echo(QuicConnectionProtocol):
    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            self._quic.send_stream_data(event.stream_id, event.data, event.end_stream)
            self.transmit()


class Reader(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received = bytearray()
        self.done = asyncio.get_running_loop().create_future()

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived):
            self.received += event.data
            if event.end_stream and not self.done.done():
                self.done.set_result(None)
        elif isinstance(event, ConnectionTerminated) and not self.done.done():
            self.done.set_result(event.error_code)


async def run_server(keyfile: str, port: int, seconds: float) -> None:
    server = await serve(
        "127.0.0.1", port, configuration=configuration(keyfile, False), create_protocol=Echo
    )
    await asyncio.sleep(seconds)
    server.close()


async def run_client(keyfile: str, port: int, local_port: int, size: int) -> None:
    payload = bytes(range(256)) * (size // 256)
    async with connect(
        "127.0.0.1",
        port,
        configuration=configuration(keyfile, True),
        create_protocol=Reader,
        local_port=local_port,
        wait_connected=True,
    ) as connected:
        client: Any = connected
        stream_id = client._quic.get_next_available_stream_id()
        client._quic.send_stream_data(stream_id, payload, end_stream=True)
        client.transmit()
        error = await asyncio.wait_for(client.done, 20)
        received = bytes(client.received)
        print(
            json.dumps(
                {
                    "echoed": len(received),
                    "sha256": hashlib.sha256(received).hexdigest(),
                    "sent_sha256": hashlib.sha256(payload).hexdigest(),
                    "error": error,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    if sys.argv[1] == "server":
        asyncio.run(run_server(sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
    else:
        asyncio.run(run_client(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
