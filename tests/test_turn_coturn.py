"""
The TURN client against coturn on loopback, over UDP, TCP and TLS.

coturn relays to peer sockets of our own on 127.0.0.1 (it is started with
C{--allow-loopback-peers}).  Timers that run for minutes in production are
shortened through the client's own settings (C{refresh_fraction}, a short
retransmission schedule), never by waiting; coturn grants at least 600 s
whatever lifetime is asked for, so a refresh is made to come early rather
than the lifetime short.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, task
from twisted.internet import reactor as global_reactor
from twisted.internet.protocol import DatagramProtocol
from twisted.protocols.portforward import ProxyFactory

from tests.support.coturn import (
    PRIMARY_HOST,
    CoturnInstance,
    CoturnMode,
    require_tool,
    running_coturn,
)
from tests.support.polling import until
from twisted_nat.errors import (
    TURNAllocationClosed,
    TURNAuthenticationError,
    TURNQuotaError,
    TURNUnavailable,
)
from twisted_nat.mux import UDPMultiplexer
from twisted_nat.stun.client import RetransmissionSchedule, STUNClient
from twisted_nat.turn import Allocation, TURNClient, connect_stream

pytestmark = pytest.mark.interop

reactor: Any = global_reactor

USER, PASSWORD, REALM = "turn-user", "turn-password", "turn.test"
QUICK = RetransmissionSchedule(rto=0.1, rc=4, rm=4)
"""Loopback answers in well under a millisecond: a lost server shows within 1.1 s."""


@pytest.fixture(scope="module")
def coturn() -> Iterator[CoturnInstance]:
    """One coturn for the tests that do not need a configuration of their own."""
    require_tool("turnserver")
    with running_coturn(
        CoturnMode.TURN, username=USER, password=PASSWORD, realm=REALM, tcp=True
    ) as server:
        yield server


class Peer(DatagramProtocol):
    """A plain UDP peer: records what arrives and answers C{echo:} + data."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, tuple[str, int]]] = []

    def datagramReceived(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.append((data, addr))
        self.transport.write(b"echo:" + data, addr)


class Sockets:
    """Every socket and client a test opens, closed at its end."""

    def __init__(self) -> None:
        self.ports: list[Any] = []
        self.clients: list[TURNClient] = []

    def turn_client(self, **options: Any) -> TURNClient:
        mux = UDPMultiplexer()
        port = options.pop("port", 0)
        self.ports.append(reactor.listenUDP(port, mux, interface=PRIMARY_HOST))
        stun = STUNClient(reactor=reactor, schedule=options.pop("schedule", QUICK))
        client = TURNClient.on_multiplexer(mux, reactor, stun, **options)
        self.clients.append(client)
        return client

    def peer(self) -> tuple[Peer, tuple[str, int]]:
        peer = Peer()
        port = reactor.listenUDP(0, peer, interface=PRIMARY_HOST)
        self.ports.append(port)
        return peer, (PRIMARY_HOST, port.getHost().port)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for port in self.ports:
            await defer.maybeDeferred(port.stopListening)


@pytest_twisted.async_yield_fixture
async def sockets() -> AsyncIterator[Sockets]:
    opened = Sockets()
    yield opened
    await opened.close()


def collector() -> tuple[list[tuple[bytes, tuple[str, int]]], Callable[[bytes, Any], None]]:
    received: list[tuple[bytes, tuple[str, int]]] = []
    return received, lambda data, peer: received.append((data, peer))


# --- UDP -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_allocate_with_the_right_credentials(coturn, sockets):
    client = sockets.turn_client()
    allocation = await client.allocate(coturn.address, USER, PASSWORD)
    host, port = allocation.relayed_address
    assert host == PRIMARY_HOST and port > 0
    local = client.transport.getHost()
    assert allocation.mapped_address == (local.host, local.port)
    assert allocation.lifetime >= 600
    assert allocation.server == coturn.address


@pytest_twisted.ensureDeferred
async def test_a_stale_allocation_of_an_earlier_run_is_released(coturn, sockets):
    """
    A process that died without deallocating leaves coturn an allocation
    for its socket's address; the next run on the same port gets 437 to
    its Allocate, releases the old allocation and allocates anew.
    """
    mux = UDPMultiplexer()
    port = reactor.listenUDP(0, mux, interface=PRIMARY_HOST)
    number = port.getHost().port
    first = TURNClient.on_multiplexer(mux, reactor, STUNClient(reactor=reactor, schedule=QUICK))
    old = await first.allocate(coturn.address, USER, PASSWORD)
    first.lose_all(TURNUnavailable("the process died"))  # no refresh, no deallocation
    assert not old.active
    await defer.maybeDeferred(port.stopListening)

    client = sockets.turn_client(port=number)
    assert client.transport.getHost().port == number
    allocation = await client.allocate(coturn.address, USER, PASSWORD)
    assert client.stats.stale_allocations == 1
    peer, address = sockets.peer()
    await allocation.create_permission(address[0])
    allocation.send(b"after a restart", address)
    await until(lambda: peer.received)
    assert peer.received[0] == (b"after a restart", allocation.relayed_address)


@pytest_twisted.ensureDeferred
async def test_wrong_password(coturn, sockets):
    client = sockets.turn_client()
    with pytest.raises(TURNAuthenticationError) as caught:
        await client.allocate(coturn.address, USER, "not-the-password")
    assert caught.value.code == 401
    assert client.allocations == {}


@pytest_twisted.ensureDeferred
async def test_send_indication_to_a_peer_and_data_indication_back(coturn, sockets):
    client = sockets.turn_client()
    received, receiver = collector()
    allocation = await client.allocate(coturn.address, USER, PASSWORD, receiver=receiver)
    peer, peer_address = sockets.peer()
    await allocation.create_permission(PRIMARY_HOST)
    allocation.send(b"hello through the relay", peer_address)
    await until(lambda: received)
    assert peer.received == [(b"hello through the relay", allocation.relayed_address)]
    assert received == [(b"echo:hello through the relay", peer_address)]
    assert client.stats.sent_indications == 1
    assert client.stats.received_indications == 1


@pytest_twisted.ensureDeferred
async def test_channel_data_both_ways(coturn, sockets):
    client = sockets.turn_client()
    received, receiver = collector()
    allocation = await client.allocate(coturn.address, USER, PASSWORD, receiver=receiver)
    peer, peer_address = sockets.peer()
    other, other_address = sockets.peer()
    number = await allocation.bind_channel(peer_address)
    assert 0x4000 <= number <= 0x4FFF
    assert await allocation.bind_channel(other_address) == number + 1
    for size in (0, 1, 5, 1200):  # unaligned sizes too: no padding over UDP
        allocation.send(bytes(range(256)) * 5 if size == 1200 else b"x" * size, peer_address)
    allocation.send(b"to the other", other_address)
    await until(lambda: len(received) == 5)
    assert [len(data) for data, _ in peer.received] == [0, 1, 5, 1280]
    assert other.received == [(b"to the other", allocation.relayed_address)]
    assert sorted(received) == sorted(
        [(b"echo:" + data, peer_address) for data, _ in peer.received]
        + [(b"echo:to the other", other_address)]
    )
    assert client.stats.sent_channel_data == 5
    assert client.stats.received_channel_data == 5
    assert client.stats.received_indications == 0


@pytest_twisted.ensureDeferred
async def test_timed_refresh_with_a_stale_nonce_keeps_the_allocation(sockets):
    """
    coturn with one-second nonces: the refresh timer (at 0.2% of 600 s) meets a
    438, retries with the new nonce, and the allocation stays in use.
    """
    require_tool("turnserver")
    with running_coturn(
        CoturnMode.TURN,
        username=USER,
        password=PASSWORD,
        realm=REALM,
        extra_args=["--stale-nonce=1"],
    ) as server:
        client = sockets.turn_client(refresh_fraction=0.002)
        received, receiver = collector()
        allocation = await client.allocate(server.address, USER, PASSWORD, receiver=receiver)
        granted_until = allocation.expires_at
        # coturn checks nonce ages on a one-second tick: the first or second
        # refresh (every 1.2 s) meets the 438
        await until(lambda: client.stats.stale_nonces >= 1, timeout=6)
        await task.deferLater(reactor, 0.2)
        assert client.stats.refreshes >= 1
        assert allocation.active
        assert allocation.expires_at > granted_until
        peer, peer_address = sockets.peer()
        await allocation.bind_channel(peer_address)
        allocation.send(b"still relayed", peer_address)
        await until(lambda: received)
        assert received == [(b"echo:still relayed", peer_address)]
        await allocation.close()


@pytest_twisted.ensureDeferred
async def test_quota_and_deallocation_on_close(sockets):
    """
    With a quota of one allocation per user, a second socket gets 486; once
    the first closes (Refresh with LIFETIME 0), the second succeeds.
    """
    require_tool("turnserver")
    with running_coturn(
        CoturnMode.TURN,
        username=USER,
        password=PASSWORD,
        realm=REALM,
        extra_args=["--user-quota", "1"],
    ) as server:
        first, second = sockets.turn_client(), sockets.turn_client()
        allocation = await first.allocate(server.address, USER, PASSWORD)
        with pytest.raises(TURNQuotaError) as caught:
            await second.allocate(server.address, USER, PASSWORD)
        assert caught.value.code == 486
        await allocation.close()
        assert isinstance(allocation.lost.result, TURNAllocationClosed)
        assert first.allocations == {}
        # coturn frees the quota on its next one-second tick, not at once;
        # without the deallocation it would stay taken for the 600 s lifetime.
        deadline = reactor.seconds() + 3
        while True:
            try:
                again = await second.allocate(server.address, USER, PASSWORD)
                break
            except TURNQuotaError:
                if reactor.seconds() > deadline:
                    raise
                await task.deferLater(reactor, 0.1)
        assert again.active
        await again.close()


@pytest_twisted.ensureDeferred
async def test_server_stopped_refresh_fails_and_lost_fires(sockets):
    require_tool("turnserver")
    client = sockets.turn_client(refresh_fraction=0.002)
    with running_coturn(CoturnMode.TURN, username=USER, password=PASSWORD, realm=REALM) as server:
        allocation = await client.allocate(server.address, USER, PASSWORD)
        assert allocation.active
    # coturn is gone; the refresh timer fires 1.2 s after the allocation
    reason = await allocation.lost
    assert isinstance(reason, TURNUnavailable)
    assert not allocation.active
    assert client.allocations == {}


@pytest_twisted.ensureDeferred
async def test_unreachable_server(sockets):
    require_tool("turnserver")
    with running_coturn(CoturnMode.TURN, username=USER, password=PASSWORD, realm=REALM) as server:
        address = server.address
    client = sockets.turn_client()
    with pytest.raises(TURNUnavailable):
        await client.allocate(address, USER, PASSWORD)


# --- TCP and TLS --------------------------------------------------------------------------


async def exercise_stream(client: TURNClient, sockets: Sockets) -> Allocation:
    """Allocate, then data both ways by Send/Data indications and by channel."""
    received, receiver = collector()
    allocation = await client.allocate(None, USER, PASSWORD, receiver=receiver)
    assert allocation.relayed_address[0] == PRIMARY_HOST
    peer, peer_address = sockets.peer()
    other, other_address = sockets.peer()
    await allocation.create_permission(PRIMARY_HOST)
    allocation.send(b"by indication", other_address)
    await until(lambda: received)
    assert received == [(b"echo:by indication", other_address)]
    await allocation.bind_channel(peer_address)
    for data in (b"a", b"abcde", b"abcdefgh"):  # ChannelData padded on the stream
        allocation.send(data, peer_address)
    await until(lambda: len(received) == 4)
    assert [d for d, _ in peer.received] == [b"a", b"abcde", b"abcdefgh"]
    assert received[1:] == [
        (b"echo:a", peer_address),
        (b"echo:abcde", peer_address),
        (b"echo:abcdefgh", peer_address),
    ]
    assert client.stats.received_channel_data == 3
    assert await allocation.refresh() >= 600
    return allocation


@pytest_twisted.ensureDeferred
async def test_over_tcp(coturn, sockets):
    client = await connect_stream(reactor, f"tcp:host={coturn.host}:port={coturn.port}")
    try:
        allocation = await exercise_stream(client, sockets)
    finally:
        await client.close()
    assert isinstance(allocation.lost.result, TURNAllocationClosed)


@pytest_twisted.ensureDeferred
async def test_wrong_password_over_tcp(coturn):
    client = await connect_stream(reactor, f"tcp:host={coturn.host}:port={coturn.port}")
    try:
        with pytest.raises(TURNAuthenticationError):
            await client.allocate(None, USER, "wrong")
    finally:
        await client.close()


@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_over_tls(coturn, sockets):
    """
    TLS is Twisted's: a TLS endpoint on loopback (Twisted's test key) that
    forwards to coturn's TCP port stands in for coturn's own TLS listener,
    which the fixture keeps off.
    """
    pytest.importorskip("OpenSSL")
    import twisted.test
    from twisted.python.filepath import FilePath

    pem = FilePath(twisted.test.__file__).sibling("server.pem").path
    terminator = endpoints.serverFromString(
        reactor,
        f"ssl:0:interface={PRIMARY_HOST}:privateKey={endpoints.quoteStringArgument(pem)}",
    )
    proxy = ProxyFactory(coturn.host, coturn.port)
    listening = await terminator.listen(proxy)
    sockets.ports.append(listening)
    # ssl: checks no certificate (Twisted's test one); applications use tls:HOST:PORT.
    client = await connect_stream(
        reactor, f"ssl:host={PRIMARY_HOST}:port={listening.getHost().port}"
    )
    try:
        await exercise_stream(client, sockets)
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_stream_connection_refused(coturn):
    with pytest.raises(TURNUnavailable):
        await connect_stream(reactor, f"tcp:host={PRIMARY_HOST}:port=1")
