"""
Our QUIC driver on real loopback sockets against a stock aioquic peer on
asyncio (a child process that imports nothing of ours: standard QUIC and
TLS 1.3 on the wire), and two full peers opening streams to each other
through the real service and rendezvous server.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
from typing import Any

import pytest_twisted
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from tests.support.polling import until
from tests.test_interop import run_process
from twisted_nat.candidates import Candidate, CandidateType
from twisted_nat.connection import AppDataRouter, PeerConnection
from twisted_nat.control import SessionKeys
from twisted_nat.errors import KeyMismatch
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.rendezvous import RendezvousService
from twisted_nat.service import NATTraversalService, PeerSettings
from twisted_nat.streams import PeerStreams
from twisted_nat.trust import Identity

reactor: Any = global_reactor
PEER_SCRIPT = os.path.join(os.path.dirname(__file__), "support", "aioquic_peer.py")


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        pass


class Collect(Protocol):
    def __init__(self) -> None:
        self.received = bytearray()
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self.lost = reason


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keyfile(tmp_path: Any, identity: Identity, name: str) -> str:
    path = tmp_path / name
    pem = identity.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    path.write_bytes(pem)
    return str(path)


class OurEnd:
    """Our side on a real socket: a peer connection to the stock peer's port, with streams."""

    def __init__(self, identity: Identity, remote_port: int, peer: Identity, client: bool) -> None:
        self.mux = UDPMultiplexer()
        self.port = reactor.listenUDP(0, self.mux, interface="127.0.0.1")
        router = AppDataRouter()
        router.attach(self.mux)
        factory = Factory.forProtocol(Echo)
        self.streams = PeerStreams(reactor, identity, router, factory)
        self.streams.router.attach(self.mux)
        keys = SessionKeys.derive(b"s" * 16, b"k" * 32, offerer=client)
        remote = Candidate(CandidateType.HOST, "127.0.0.1", remote_port)
        self.connection = PeerConnection(router, keys, remote, peer="stock", peer_key=peer.public)
        self.link = self.streams.link(self.connection, client=client)

    def close(self) -> Any:
        self.connection.close()
        return self.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_stock_aioquic_client_echoes_through_our_server(tmp_path):
    ours, theirs = Identity.generate(), Identity.generate()
    local_port = free_udp_port()
    end = OurEnd(ours, local_port, theirs, client=False)
    try:
        code, out, err = await run_process(
            [
                sys.executable,
                PEER_SCRIPT,
                "client",
                keyfile(tmp_path, theirs, "k"),
                str(end.port.getHost().port),
                str(local_port),
                "300000",
            ],
            timeout=30,
        )
    finally:
        await end.close()
    assert code == 0, err
    result = json.loads(out)
    assert result["error"] is None
    assert result["echoed"] == 300000 - 300000 % 256
    assert result["sha256"] == result["sent_sha256"]
    assert end.streams.stats.key_mismatches == 0


@pytest_twisted.ensureDeferred
async def test_our_server_refuses_a_stock_client_with_another_key(tmp_path):
    ours, expected, stranger = Identity.generate(), Identity.generate(), Identity.generate()
    local_port = free_udp_port()
    end = OurEnd(ours, local_port, expected, client=False)
    try:
        code, out, err = await run_process(
            [
                sys.executable,
                PEER_SCRIPT,
                "client",
                keyfile(tmp_path, stranger, "k"),
                str(end.port.getHost().port),
                str(local_port),
                "1024",
            ],
            timeout=30,
        )
    finally:
        await end.close()
    assert code == 0, err
    result = json.loads(out)
    assert result["error"] == 0x100 + 42, "TLS alert bad_certificate"
    assert result["echoed"] == 0
    assert end.streams.stats.key_mismatches == 1


async def against_stock_server(tmp_path: Any, server_key: Identity, expected: Identity) -> Any:
    ours = Identity.generate()
    port = free_udp_port()
    serving = Deferred.fromCoroutine(
        run_process(
            [
                sys.executable,
                PEER_SCRIPT,
                "server",
                keyfile(tmp_path, server_key, "k"),
                str(port),
                "8",
            ],
            timeout=30,
        )
    )
    end = OurEnd(ours, port, expected, client=True)
    collect = Collect()
    try:
        opened = end.connection.open_stream(collect)
        outcome: list[Any] = []
        opened.addBoth(outcome.append)
        await until(lambda: bool(outcome), timeout=15)
        if not isinstance(outcome[0], Failure):
            payload = os.urandom(200_000)
            collect.transport.write(payload)
            collect.transport.loseWriteConnection()
            await until(lambda: len(collect.received) >= len(payload), timeout=15)
            assert hashlib.sha256(collect.received).digest() == hashlib.sha256(payload).digest()
    finally:
        await end.close()
        await serving
    return outcome[0], end


@pytest_twisted.ensureDeferred
async def test_our_client_echoes_through_a_stock_aioquic_server(tmp_path):
    server_key = Identity.generate()
    outcome, end = await against_stock_server(tmp_path, server_key, server_key)
    assert isinstance(outcome, Collect)
    assert end.streams.stats.key_mismatches == 0


@pytest_twisted.ensureDeferred
async def test_our_client_refuses_a_stock_server_with_another_key(tmp_path):
    outcome, end = await against_stock_server(tmp_path, Identity.generate(), Identity.generate())
    assert isinstance(outcome, Failure) and outcome.check(KeyMismatch)
    assert end.streams.stats.key_mismatches == 1


def peer(name: str, endpoint: str, factory: Any) -> NATTraversalService:
    service = NATTraversalService(
        [],
        reactor=reactor,
        name=name,
        rendezvous=endpoint,
        stream_factory=factory,
        settings=PeerSettings(
            interface="127.0.0.1", host_addresses=["127.0.0.1"], detect_behavior=False
        ),
    )
    service.startService()
    return service


@pytest_twisted.ensureDeferred
async def test_two_peers_open_streams_to_each_other_on_loopback():
    server = RendezvousService(reactor, "tcp:0:interface=127.0.0.1")
    server.startService()
    port = (await server.when_listening()).getHost().port  # type: ignore[attr-defined]
    endpoint = f"tcp:host=127.0.0.1:port={port}"
    alice = peer("alice", endpoint, Factory.forProtocol(Echo))
    bob = peer("bob", endpoint, Factory.forProtocol(Echo))
    try:
        waiting: list[Deferred[Any]] = [s.signaling.when_registered() for s in (alice, bob)]
        for d in waiting:
            await d
        payload = os.urandom(1 << 20)
        to_bob, to_alice = Collect(), Collect()
        await alice.open_stream("bob", to_bob)
        to_bob.transport.write(payload)
        await bob.open_stream("alice", to_alice)
        to_alice.transport.write(b"and back")
        await until(lambda: len(to_bob.received) >= len(payload), timeout=20)
        await until(lambda: bytes(to_alice.received) == b"and back", timeout=20)
    finally:
        await alice.stopService()
        await bob.stopService()
        await server.stopService()
    assert bytes(to_bob.received) == payload
    assert to_bob.transport.getPeer().key == bob.key
    assert to_alice.transport.getPeer().key == alice.key
