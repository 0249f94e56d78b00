"""
The port mapper on C{task.Clock}, driven by fake clients whose gateway
answers as each test scripts: the order of protocols, renewals, restores,
lapses, searches again and deletion on stop.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from tests.test_portmap_clients import results
from twisted_nat.errors import PortMappingError
from twisted_nat.portmap.client import Grant, IMappingClient
from twisted_nat.portmap.mapper import PortMapper
from twisted_nat.portmap.values import Mapping, Mode, Protocol


@implementer(IMappingClient)
class FakeClient:
    """A client whose answers the test scripts: a Grant, an error, or a Deferred."""

    def __init__(self, protocol: Protocol, clock: Clock) -> None:
        self.protocol = protocol
        self.clock = clock
        self.answers: list[object] = []
        self.maps: list[Mapping | None] = []
        self.unmapped: list[Mapping] = []
        self.closed = False
        self.pending: list[Deferred[Grant]] = []

    def grant(self, port: int = 40000, lifetime: int = 100, restarted: bool = False) -> Grant:
        mapping = Mapping(
            self.protocol, ("203.0.113.5", port), 4567, lifetime, self.clock.seconds()
        )
        return Grant(mapping, restarted)

    def map(self, internal_port: int, lifetime: int, previous: Mapping | None) -> Deferred[Grant]:
        self.maps.append(previous)
        answer = self.answers.pop(0) if self.answers else PortMappingError("no answer")
        if isinstance(answer, Exception):
            return fail(answer)
        if callable(answer):
            return succeed(answer())
        assert isinstance(answer, Deferred)
        self.pending.append(answer)
        return answer

    def unmap(self, mapping: Mapping) -> Deferred[None]:
        self.unmapped.append(mapping)
        return succeed(None)

    def close(self) -> None:
        self.closed = True
        for pending in self.pending:
            if not pending.called:
                pending.errback(PortMappingError("port mapping stopped"))


def mapper(
    mode: Mode = Mode.AUTO,
) -> tuple[PortMapper, Clock, dict[Protocol, FakeClient], list[tuple[object, object]]]:
    clock = Clock()
    clients = {p: FakeClient(p, clock) for p in Protocol}
    changes: list[tuple[object, object]] = []
    made = PortMapper(
        clock, mode, clients.__getitem__, 4567, lambda o, n: changes.append((o, n)), 100
    )
    return made, clock, clients, changes


def test_auto_tries_pcp_then_natpmp_then_upnp() -> None:
    made, clock, clients, changes = mapper()
    clients[Protocol.PCP].answers = [PortMappingError("no PCP")]
    clients[Protocol.NATPMP].answers = [PortMappingError("no NAT-PMP")]
    upnp_client = clients[Protocol.UPNP]
    upnp_client.answers = [upnp_client.grant]
    made.start()
    clock.advance(0)
    assert made.mapping is not None and made.mapping.protocol is Protocol.UPNP
    assert clients[Protocol.PCP].closed and clients[Protocol.NATPMP].closed
    assert changes == [(None, made.mapping)]
    status = made.status()
    assert status["failures"] == {"pcp": "no PCP", "natpmp": "no NAT-PMP"}
    assert status["mapping"]["protocol"] == "upnp"  # type: ignore[index]


def test_renews_at_half_the_lease_and_restores_after_a_restart() -> None:
    made, clock, clients, changes = mapper(Mode.PCP)
    client = clients[Protocol.PCP]
    client.answers = [client.grant, client.grant, lambda: client.grant(port=40002, restarted=True)]
    made.start()
    clock.advance(0)
    first = made.mapping
    clock.advance(49)
    assert len(client.maps) == 1
    clock.advance(1)
    assert client.maps == [None, first]
    assert len(changes) == 1  # the same address: nothing to tell
    clock.advance(50)
    assert made.restores == 1
    assert made.mapping is not None and made.mapping.external[1] == 40002
    renewed = Mapping(Protocol.PCP, ("203.0.113.5", 40000), 4567, 100, 50.0)
    assert changes[-1] == (renewed, made.mapping)


def test_a_lapsed_mapping_is_dropped_and_searched_again() -> None:
    made, clock, clients, changes = mapper(Mode.NATPMP)
    client = clients[Protocol.NATPMP]
    client.answers = [client.grant]
    made.start()
    clock.advance(0)
    mapping = made.mapping
    for _ in range(40):
        clock.advance(5)
        if made.mapping is None:
            break
    assert made.mapping is None and clock.seconds() >= 100
    assert changes[-1] == (mapping, None)
    assert client.closed


def test_no_gateway_searches_again_later() -> None:
    made, clock, clients, _ = mapper(Mode.PCP)
    made.start()
    clock.advance(0)
    assert made.mapping is None and len(clients[Protocol.PCP].maps) == 1
    clock.advance(59)
    assert len(clients[Protocol.PCP].maps) == 1
    clock.advance(1)
    assert len(clients[Protocol.PCP].maps) == 2


def test_stop_deletes_the_mapping() -> None:
    made, clock, clients, changes = mapper(Mode.PCP)
    client = clients[Protocol.PCP]
    client.answers = [client.grant]
    made.start()
    clock.advance(0)
    mapping = made.mapping
    assert results(made.stop()) == [None]
    assert client.unmapped == [mapping] and client.closed
    assert changes[-1] == (mapping, None)
    assert clock.getDelayedCalls() == []


def test_stop_during_a_search_ends_it() -> None:
    made, clock, clients, _ = mapper(Mode.PCP)
    client = clients[Protocol.PCP]
    pending: Deferred[Grant] = Deferred()
    client.answers = [pending]
    made.start()
    clock.advance(0)
    stopped = results(made.stop())
    assert client.closed
    assert stopped == [None] and made.mapping is None


def test_off_does_nothing() -> None:
    made, clock, clients, _ = mapper(Mode.OFF)
    made.start()
    clock.advance(100)
    assert all(not c.maps for c in clients.values())


def test_failures_are_those_of_the_last_search() -> None:
    made, clock, clients, _ = mapper(Mode.AUTO)
    made.start()
    clock.advance(0)
    assert set(made.failures) == set(Protocol)
    natpmp_client = clients[Protocol.NATPMP]
    natpmp_client.answers = [natpmp_client.grant]
    clock.advance(60)
    assert made.mapping is not None and set(made.failures) == {Protocol.PCP}
