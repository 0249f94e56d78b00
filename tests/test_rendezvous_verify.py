"""
L{RendezvousClient.verify}: after a lost path, a rendezvous connection that
does not answer is made again at once, without the retry policy's first
delay; later losses wait as the policy says.  Over loopback TCP.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet.task import deferLater

from tests.test_rendezvous import KEYS, Peers, client_endpoint
from twisted_nat.rendezvous import RendezvousClient, RendezvousService

reactor: Any = global_reactor


class Policy:
    """A retry policy that records the attempts it is asked about."""

    def __init__(self) -> None:
        self.attempts: list[int] = []

    def __call__(self, attempt: int) -> float:
        self.attempts.append(attempt)
        return 0.05


@pytest.fixture
def peers():
    p = Peers()
    yield p
    pytest_twisted.blockon(p.stop())


def server_end(server: RendezvousService, name: str = "alice") -> Any:
    return server.factory.directory.by_key[KEYS[name].public]


async def registered_client(peers: Peers) -> tuple[RendezvousService, RendezvousClient, Policy]:
    server = peers.server()
    policy = Policy()
    client = peers.client(client_endpoint(server), "alice", retry_policy=policy)
    await client.when_registered()
    return server, client, policy


@pytest_twisted.ensureDeferred
async def test_a_live_connection_answers_and_stays(peers):
    server, client, policy = await registered_client(peers)
    before = server_end(server)
    assert await client.verify() is True
    assert client.registered
    assert server_end(server) is before
    assert policy.attempts == []


@pytest_twisted.ensureDeferred
async def test_a_reset_connection_is_made_again_without_the_policy(peers):
    server, client, policy = await registered_client(peers)
    before = server_end(server)
    verifying = client.verify()
    before.transport.abortConnection()  # the server resets it, as after a NAT reboot
    assert await verifying is False
    await client.when_registered()
    assert server_end(server) is not before
    assert policy.attempts == []

    # The next loss, with no verification asked, waits as the policy says.
    server_end(server).transport.abortConnection()
    await deferLater(reactor, 0.01, lambda: None)
    await client.when_registered()
    assert policy.attempts == [1]


@pytest_twisted.ensureDeferred
async def test_a_silent_connection_is_dropped_and_made_again(peers):
    server, client, policy = await registered_client(peers)
    before = server_end(server)
    before.transport.pauseProducing()  # the server reads nothing more from it
    assert await client.verify(timeout=0.2) is False
    await client.when_registered()
    assert server_end(server) is not before
    assert policy.attempts == []


@pytest_twisted.ensureDeferred
async def test_verifying_while_disconnected_says_so(peers):
    server, client, policy = await registered_client(peers)
    await server.stopService()
    await deferLater(reactor, 0.01, lambda: None)
    assert not client.registered
    assert await client.verify() is False
