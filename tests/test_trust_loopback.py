"""
Two services and our rendezvous server on real loopback sockets: every
byte the server relays is public, and no application payload crosses the
wire in clear.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.defer import Deferred

from tests.fakes import Collector
from tests.support.polling import until
from twisted_nat.rendezvous import RendezvousServerFactory, RendezvousService
from twisted_nat.rendezvous.server import RendezvousServerProtocol
from twisted_nat.service import NATTraversalService, PeerSettings

reactor: Any = global_reactor
PAYLOAD = b"pay to IBAN DE00 1111 2222 3333 4444 00"


class RecordingFactory(RendezvousServerFactory):
    """The server, with every byte it receives and sends kept."""

    def __init__(self) -> None:
        super().__init__(reactor)
        self.seen: list[bytes] = []

    def buildProtocol(self, addr: Any) -> RendezvousServerProtocol:
        protocol = super().buildProtocol(addr)
        seen = self.seen
        received = protocol.dataReceived

        def data_received(data: bytes) -> None:
            seen.append(data)
            received(data)

        protocol.dataReceived = data_received  # type: ignore[method-assign]

        class Recording:
            def __init__(self, transport: Any) -> None:
                self._transport = transport

            def write(self, data: bytes) -> None:
                seen.append(data)
                self._transport.write(data)

            def writeSequence(self, data: list[bytes]) -> None:
                seen.extend(data)
                self._transport.writeSequence(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._transport, name)

        make_connection = protocol.makeConnection

        def make_recording(transport: Any) -> None:
            recording: Any = Recording(transport)
            make_connection(recording)

        protocol.makeConnection = make_recording  # type: ignore[method-assign]
        return protocol


def peer(name: str, endpoint: str, apps: list[Collector]) -> NATTraversalService:
    def factory(connection: Any) -> Collector:
        app = Collector()
        apps.append(app)
        return app

    service = NATTraversalService(
        [],
        reactor=reactor,
        name=name,
        rendezvous=endpoint,
        protocol_factory=factory,
        settings=PeerSettings(
            interface="127.0.0.1", host_addresses=["127.0.0.1"], detect_behavior=False
        ),
    )
    service.startService()
    return service


@pytest_twisted.ensureDeferred
async def test_the_rendezvous_relays_no_secret_and_the_wire_carries_no_payload():
    factory = RecordingFactory()
    server = RendezvousService(reactor, "tcp:0:interface=127.0.0.1", factory=factory)
    server.startService()
    port = (await server.when_listening()).getHost().port  # type: ignore[attr-defined]
    endpoint = f"tcp:host=127.0.0.1:port={port}"
    apps: list[Collector] = []
    alice, bob = peer("alice", endpoint, apps), peer("bob", endpoint, [])
    datagrams: list[bytes] = []
    try:
        waiting: list[Deferred[Any]] = [s.signaling.when_registered() for s in (alice, bob)]
        for d in waiting:
            await d
        socket: Any = alice.port
        write = socket.write

        def recording(data: bytes, addr: Any) -> Any:
            datagrams.append(data)
            return write(data, addr)

        socket.write = recording
        connection = await alice.connect("bob")
        connection.write(PAYLOAD)
        await until(lambda: bool(bob.connections) and bool(bob.connections["alice"].protocol))
        await until(lambda: any(app.received for app in bob_apps(bob)))
    finally:
        await alice.stopService()
        await bob.stopService()
        await server.stopService()
    relayed = b"".join(factory.seen)
    assert b"Connect" in relayed and b"DeliverOffer" in relayed
    keys = connection.keys
    for secret in (keys.send, keys.receive, keys.control_send, keys.control_receive):
        assert secret not in relayed and secret.hex().encode() not in relayed
    assert PAYLOAD not in relayed
    assert datagrams
    for datagram in datagrams:
        for start in range(len(PAYLOAD) - 7):
            assert PAYLOAD[start : start + 8] not in datagram


def bob_apps(bob: NATTraversalService) -> list[Collector]:
    connection = bob.connections.get("alice")
    protocol = connection.protocol if connection is not None else None
    return [protocol] if isinstance(protocol, Collector) else []
