"""
Relays after a lost path, against coturn on loopback: an allocation the
server no longer keeps (as after a NAT reboot, which moves a peer to a new
port) is found by the check that follows a lost path and made again at
once, so that the new punch offers a relay that works and the relay
carries the connection's traffic again.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as global_reactor
from twisted.internet import task

from tests.support.coturn import CoturnInstance
from tests.support.polling import until
from tests.test_service_turn import coturn, start_pair, stop
from twisted_nat.candidates import CandidateType
from twisted_nat.errors import TURNError
from twisted_nat.service import NATTraversalService
from twisted_nat.stun.message import Method
from twisted_nat.turn.attributes import Lifetime, XorPeerAddress

pytestmark = pytest.mark.interop

__all__ = ["coturn"]  # the fixture, shared with the module it comes from

reactor: Any = global_reactor


async def forget_allocations(service: NATTraversalService) -> None:
    """
    Have the server delete C{service}'s allocations behind their backs (a
    refresh of lifetime 0 on their own 5-tuple, until the server says it
    has none), as a NAT reboot does to them in effect: the server keeps
    nothing for the address we send from.
    """
    for allocation in service.relays.allocations.values():
        signed = allocation._link.transactions.signed
        server, credentials = allocation.server, allocation._credentials
        await signed(server, Method.REFRESH, [Lifetime(0)], credentials)
        # The server ends it at its next timer tick: wait until it says so.
        while True:
            try:
                await signed(
                    server, Method.CREATE_PERMISSION, [XorPeerAddress("127.0.0.1", 0)], credentials
                )
            except TURNError:  # 437, or 400 from coturn: no allocation there
                break
            await task.deferLater(reactor, 0.05)


def relayed_candidates(service: NATTraversalService) -> list[tuple[str, int]]:
    return [c.address for c in service.candidates if c.kind is CandidateType.RELAYED]


@pytest_twisted.ensureDeferred
async def test_a_forgotten_allocation_is_made_again_at_once(coturn: CoturnInstance) -> None:
    services, _ = await start_pair(coturn, "udp", relay_only=True)
    try:
        alice = services["alice"]
        [before] = alice.relays.allocations.values()
        await forget_allocations(alice)
        await alice.relays.verify()
        [after] = alice.relays.allocations.values()
        assert after is not before and after.active and not before.active
        assert relayed_candidates(alice) == [after.relayed_address]
        assert alice.relays.retrying == [], "made now, not after the retry pause"
    finally:
        await stop(services)


@pytest_twisted.ensureDeferred
async def test_a_live_allocation_is_kept(coturn: CoturnInstance) -> None:
    services, _ = await start_pair(coturn, "udp", relay_only=True)
    try:
        alice = services["alice"]
        before = relayed_candidates(alice)
        await alice.relays.verify()
        assert relayed_candidates(alice) == before
    finally:
        await stop(services)


@pytest_twisted.ensureDeferred
async def test_the_relay_carries_traffic_again_after_both_allocations_are_lost(
    coturn: CoturnInstance,
) -> None:
    """
    A connection only a relay can carry, both peers' allocations gone: the
    path is lost, punched again with new allocations, and data flows.
    """
    services, apps = await start_pair(coturn, "udp", relay_only=True)
    try:
        alice, bob = services["alice"], services["bob"]
        connection = await alice.connect("bob")
        assert connection.relayed
        await until(lambda: "alice" in bob.connections)
        session = connection.session_id
        for service in (alice, bob):
            await forget_allocations(service)
        await until(
            lambda: connection.session_id != session and connection.state == "healthy", timeout=60
        )
        assert connection.relayed
        connection.write(b"through a new relay")
        await until(lambda: any(app.received for app in apps["bob"]))
        received = [data for app in apps["bob"] for data, _ in app.received]
        assert b"through a new relay" in received
    finally:
        await stop(services)
