"""
Port mapping in the service: the mapped candidate (its rank, and its wire
form, which older peers read as server-reflexive and sign and check as
it is), the service offering and withdrawing it, C{--status}, and
C{twistd nat peer --port-mapping}.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from tests.support.world import PRIMARY
from twisted_nat import testing as sim
from twisted_nat.candidates import Candidate, CandidateType, rank
from twisted_nat.portmap import Grant, IMappingClient, Mapping, Mode, Protocol
from twisted_nat.rendezvous.values import Offer
from twisted_nat.service import NATTraversalService, PeerSettings
from twisted_nat.service.portmapping import PortMapping
from twisted_nat.stun.server import STUNServerGroup
from twisted_nat.tap import Options
from twisted_nat.trust import Identity
from twisted_nat.trust.handshake import Offering, check_offer

MAPPED = Candidate(CandidateType.MAPPED, "203.0.113.5", 40000)


def test_mapped_ranks_between_host_and_server_reflexive() -> None:
    host = Candidate(CandidateType.HOST, "192.0.2.10", 4567)
    reflexive = Candidate(CandidateType.SERVER_REFLEXIVE, "198.51.100.1", 4567)
    relayed = Candidate(CandidateType.RELAYED, "203.0.113.9", 50000)
    assert rank([relayed, reflexive, MAPPED, host]) == [host, MAPPED, reflexive, relayed]


def test_mapped_is_server_reflexive_on_the_wire() -> None:
    wire = MAPPED.as_json()
    assert wire["type"] == "srflx"
    read = Candidate.from_json(wire)
    assert read.kind is CandidateType.SERVER_REFLEXIVE
    assert read.priority == MAPPED.priority
    assert read.as_json() == wire


def test_mapped_is_no_wire_type() -> None:
    with pytest.raises(ValueError):
        Candidate.from_json({**MAPPED.as_json(), "type": "mapped"})
    with pytest.raises(ValueError):
        Candidate.from_json({**MAPPED.as_json(), "type": ["srflx"]})


def test_an_offer_with_a_mapped_candidate_checks_after_the_wire() -> None:
    alice = Identity.generate()
    offering = Offering(alice, "alice", (MAPPED,), None, "bob", None)
    read = Offer.from_json(json.loads(json.dumps(offering.offer.as_json())))
    check_offer(read)
    assert read.signed_part() == offering.offer.signed_part()


@implementer(IMappingClient)
class Gateway:
    """A client whose gateway grants 203.0.113.5:40000 and records deletions."""

    protocol = Protocol.PCP

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.asked: list[int] = []
        self.deleted: list[Mapping] = []

    def map(self, internal_port: int, lifetime: int, previous: Mapping | None) -> Deferred[Grant]:
        self.asked.append(internal_port)
        mapping = Mapping(
            Protocol.PCP, ("203.0.113.5", 40000), internal_port, lifetime, self.clock.seconds()
        )
        return succeed(Grant(mapping))

    def unmap(self, mapping: Mapping) -> Deferred[None]:
        self.deleted.append(mapping)
        return succeed(None)

    def close(self) -> None:
        pass


def service_on(
    interface: str, mode: Mode = Mode.PCP
) -> tuple[sim.SimulatedInternet, NATTraversalService, Gateway]:
    internet = sim.SimulatedInternet(seed=1, latency=0.005)
    server = internet.add_host([PRIMARY[0], "203.0.113.2"])
    STUNServerGroup(PRIMARY, ("203.0.113.2", 3479)).listen(server)
    box = internet.add_nat_of_type("198.51.100.1", "port-restricted-cone")
    host = internet.add_host("192.0.2.11", behind=box)
    gateway = Gateway(internet.clock)
    service = NATTraversalService(
        [PRIMARY],
        reactor=host,
        settings=PeerSettings(
            interface=interface, detect_behavior=False, port_mapping=mode, host_addresses=[]
        ),
        mapping_clients=lambda protocol: gateway,
    )
    service.startService()
    internet.run_until(service.ready())
    return internet, service, gateway


def test_the_service_offers_the_mapping_and_withdraws_it() -> None:
    internet, service, gateway = service_on("0.0.0.0")
    port = service._shared_port()
    assert gateway.asked == [port]
    mapped = [c for c in service.candidates if c.kind is CandidateType.MAPPED]
    assert [c.address for c in mapped] == [("203.0.113.5", 40000)]
    assert service.candidates[0].kind is CandidateType.MAPPED  # above server-reflexive
    status = service.status()
    assert status["port_mapping"]["mapping"]["external"] == "203.0.113.5:40000"
    assert status["port_mapping"]["mapping"]["protocol"] == "pcp"
    assert status["port_mapping"]["mapping"]["expires_in"] == 7200.0
    assert "mapped" in {c["type"] for c in status["candidates"]}
    stopping = service.stopService()
    internet.run_until(stopping)
    assert [m.external for m in gateway.deleted] == [("203.0.113.5", 40000)]
    assert not any(c.kind is CandidateType.MAPPED for c in service.candidates)


def test_a_socket_on_loopback_is_not_mapped() -> None:
    clock = Clock()
    gateway = Gateway(clock)
    part = PortMapping(clock, Mode.PCP, None, lambda protocol: gateway)  # type: ignore[arg-type]
    assert part.start(4567, "127.0.0.1").called
    clock.advance(10)
    assert gateway.asked == []
    assert part.status() == {"mode": "pcp", "mapping": None}


def test_off_is_the_library_default() -> None:
    assert PeerSettings().port_mapping is Mode.OFF
    _, service, gateway = service_on("0.0.0.0", Mode.OFF)
    assert gateway.asked == []


PEER = ["peer", "--name", "alice", "--rendezvous", "tcp:host=127.0.0.1:port=8765"]


def test_peer_maps_by_default() -> None:
    options = Options()
    options.parseOptions(PEER)
    assert options.subOptions["port-mapping"] is Mode.AUTO


@pytest.mark.parametrize("mode", ["auto", "pcp", "natpmp", "upnp", "off"])
def test_peer_port_mapping_option(mode: str) -> None:
    options = Options()
    options.parseOptions([*PEER, "--port-mapping", mode])
    assert options.subOptions["port-mapping"] is Mode(mode)


def test_peer_port_mapping_refuses_nonsense() -> None:
    with pytest.raises(SystemExit, match="--port-mapping must be one of"):
        Options().parseOptions([*PEER, "--port-mapping", "yes"])
